/**
 * Words: Int32 words appended a run at a time to a typed array that doubles
 * when full, for tables built in the control path (a trie's nodes and leaves,
 * a section's entry boxes) before they become fixed typed arrays.
 *
 * Why not JS arrays grown by push: they take twice the bytes a word, and the
 * tables were then copied again into typed arrays. At 100,000 rules a compile
 * allocated 430-485 MB with them and 251-291 MB without (3.5-5.3 s against
 * 2.7-2.9 s), and what a compile allocates is memory the compiling thread
 * touches for the first time, 11-16 us a page on this project's VMs.
 *
 * `a` may be replaced by a larger array on any reserve: read it after the
 * reserve, never keep it across one. Words above `length` are unspecified.
 * Values are stored as Int32: an unsigned word reads back as its Int32 bits
 * (`>>> 0` gives the unsigned value again).
 */
export class Words {
  a: Int32Array;
  length = 0;
  constructor(capacity = 256) {
    this.a = new Int32Array(Math.max(1, capacity));
  }
  /** Room for `n` more words; returns where they go. */
  reserve(n: number): number {
    const at = this.length, need = at + n;
    if (need > this.a.length) {
      let size = this.a.length * 2;
      while (size < need) size *= 2;
      const grown = new Int32Array(size);
      grown.set(this.a.subarray(0, at));
      this.a = grown;
    }
    this.length = need;
    return at;
  }
  /** The words written so far (a view, not a copy). */
  view(): Int32Array {
    return this.a.subarray(0, this.length);
  }
}
