/**
 * Address classes: which address sets an address belongs to, as one number.
 *
 * What
 *   A section of rules names address sets (groups, CIDRs). Expanding every
 *   rule into source prefix x destination prefix makes a rule between two
 *   groups of 1,000 addresses a million trie entries. Instead, as NSX
 *   address sets, ipsets and Cilium identities do, the compiler first maps
 *   an address to its class: the addresses that belong to exactly the same
 *   sets share one class id. A rule side is then a few ranges of class ids,
 *   and the rule trie classifies (source class, destination class, protocol,
 *   ports). Memory and build time grow with the number of addresses, not
 *   with their product.
 *
 * Design
 *   - The endpoints of every prefix of every set cut the address space into
 *     elementary intervals (at most 2 per prefix, plus one).
 *   - Partition refinement: all intervals start in class 0 (no set); each
 *     set in turn moves the intervals it covers from class c into a child
 *     class c' = c and the set. Every class is a node of that refinement
 *     tree, its sets the set edges on its path, so two intervals end in one
 *     class exactly when they belong to the same sets. Cost: the number of
 *     intervals each set covers, summed.
 *   - Final ids are given in depth-first order of the tree, so every set's
 *     classes are contiguous under each node that the set split off: one
 *     range per class the set cut into. Sets are refined largest first, so
 *     a wide set (10.0.0.0/8, an environment) is one range and the sets
 *     inside it stay contiguous within it: nested and disjoint groups are
 *     one range each, overlapping tag groups a few.
 *   - Neighbouring intervals with one class are merged.
 *
 * Memory layout (Int32Array, words biased by XOR 0x80000000 like the trie's keys)
 *   bounds  the first address of each interval, ascending; 1 word per entry
 *           for IPv4, 4 for IPv6. bounds[0] is address 0.
 *   cls     the class id of each interval.
 *   IPv4 single addresses (the usual workload /32s) sit instead in an
 *   open-addressing hash (hosts: [address, class] per slot, side by side so
 *   that a probe reads one cache line; power-of-two size, linear probing,
 *   class -1 for an empty slot), and bounds keeps only the wider
 *   intervals: an address not in the hash lies in a wider interval, whose
 *   start is still the last bound at or below it. One probe instead of a
 *   binary search over every workload, twice per lookup.
 *
 * Who may call what
 *   classesBuild runs in the control path. classOf4 / classOf6 are the hot
 *   path: a binary search, no allocation.
 */
import type { Family, Prefix } from './addresses.js';

const BIAS = 0x80000000 | 0;

export interface AddressClasses {
  family: Family;
  bounds: Int32Array;
  cls: Int32Array;
  /** Number of intervals in bounds. */
  count: number;
  /** Intervals in all, single addresses in the hash included. */
  intervals: number;
  /** The host hash: [address, class] per slot. */
  hosts: Int32Array;
  /** Slots in hosts - 1, or -1 when the hash is empty. */
  hostMask: number;
  /** Number of class ids (0 .. classes-1). */
  classes: number;
}

export interface ClassesBuilt {
  classes: AddressClasses;
  /** Per input set, its class ids as sorted, merged [lo, hi] pairs. */
  ranges: Int32Array[];
}

const TWO32 = 2 ** 32;
/** The low half of an IPv4 build's sort entry that stands for no prefix. */
const NOBODY = 0xffffffff;

function big6(words: readonly number[]): bigint {
  return (BigInt(words[0] >>> 0) << 96n) | (BigInt(words[1] >>> 0) << 64n) | (BigInt(words[2] >>> 0) << 32n) | BigInt(words[3] >>> 0);
}
const TWO128 = 1n << 128n;

/** Index of the last sorted point <= x (points[0] is the lowest address). */
function floorIndex<T extends number | bigint>(points: ArrayLike<T>, n: number, x: T): number {
  let lo = 0, hi = n - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (points[mid] <= x) lo = mid; else hi = mid - 1;
  }
  return lo;
}

/**
 * Classes for these sets of one family (prefixes of other families are
 * ignored; prefixes inside one set may overlap).
 */
export function classesBuild(family: Family, sets: ReadonlyArray<readonly Prefix[]>): ClassesBuilt {
  // 1. Elementary intervals: sorted unique start points, 0 first.
  let n: number;
  let coverage: Int32Array[]; // per set: [firstInterval, lastInterval] pairs
  let startOf: (i: number, out: Int32Array, o: number) => void;
  if (family === 4) {
    // Plain loops over typed arrays: a million-address set is two million points. Every span's start, and
    // its end where below 2^32, goes into one 64-bit word with who it is: the point in the high half, in
    // the low half 2q for prefix q's start and 2q+1 for its end (NOBODY for the point 0 every build has).
    // One native sort then gives both the sorted points and each prefix's interval range, without a
    // search per prefix (at a million scattered addresses the searches took twice the sort).
    let prefixes = 0;
    for (const set of sets) for (const p of set) if (p.family === 4) prefixes++;
    const entries = new BigUint64Array(prefixes * 2 + 1);
    const halves = new Uint32Array(entries.buffer); // little-endian: [low, high] per entry
    const setFirst = new Int32Array(sets.length + 1);
    halves[0] = NOBODY; halves[1] = 0;
    let e = 1, q = 0;
    for (let s = 0; s < sets.length; s++) {
      setFirst[s] = q;
      for (const p of sets[s]) {
        if (p.family !== 4) continue;
        const a = p.words[0] >>> 0, b = a + 2 ** (32 - p.len);
        halves[2 * e] = 2 * q; halves[2 * e + 1] = a; e++;
        if (b < TWO32) { halves[2 * e] = 2 * q + 1; halves[2 * e + 1] = b; e++; }
        q++;
      }
    }
    setFirst[sets.length] = q;
    entries.subarray(0, e).sort();
    const pts = new Uint32Array(e);
    const spans = new Int32Array(2 * q).fill(-1); // per prefix: first interval, last interval
    n = 0;
    for (let i = 0; i < e; i++) {
      const point = halves[2 * i + 1], who = halves[2 * i];
      if (n === 0 || point !== pts[n - 1]) pts[n++] = point;
      if (who === NOBODY) continue;
      // A start is its interval; an end is where the interval after the prefix's last begins.
      spans[who] = who & 1 ? n - 2 : n - 1;
    }
    // A span that reaches the top of the address space ends in the last interval.
    for (let j = 1; j < spans.length; j += 2) if (spans[j] === -1) spans[j] = n - 1;
    coverage = sets.map((_, s) => spans.subarray(2 * setFirst[s], 2 * setFirst[s + 1]));
    startOf = (i, out, o) => { out[o] = (pts[i] ^ BIAS) | 0; };
  } else {
    const raw: bigint[] = [0n];
    const spanOf = (p: Prefix): [bigint, bigint] => { const a = big6(p.words); return [a, a + (1n << BigInt(128 - p.len))]; };
    for (const set of sets) for (const p of set) if (p.family === 6) { const [a, b] = spanOf(p); raw.push(a); if (b < TWO128) raw.push(b); }
    raw.sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
    const pts: bigint[] = [];
    for (const x of raw) if (pts.length === 0 || pts[pts.length - 1] !== x) pts.push(x);
    n = pts.length;
    coverage = sets.map((set) => {
      const own = set.filter((p) => p.family === 6);
      const out = new Int32Array(own.length * 2);
      own.forEach((p, j) => {
        const [a, b] = spanOf(p);
        out[2 * j] = floorIndex(pts, n, a);
        out[2 * j + 1] = b >= TWO128 ? n - 1 : floorIndex(pts, n, b) - 1;
      });
      return out;
    });
    startOf = (i, out, o) => {
      const x = pts[i];
      for (let w = 0; w < 4; w++) out[o + w] = (Number((x >> BigInt(96 - 32 * w)) & 0xffffffffn) ^ BIAS) | 0;
    };
  }

  // 2. Partition refinement, largest set first.
  const cls = new Int32Array(n);
  const parent: number[] = [-1];
  const edge: number[] = [-1];
  let remap = new Int32Array(1024), stampOf = new Int32Array(1024);
  const covered = coverage.map((c) => { let s = 0; for (let j = 0; j < c.length; j += 2) s += c[j + 1] - c[j] + 1; return s; });
  const order = sets.map((_, i) => i).sort((a, b) => covered[b] - covered[a] || a - b);
  let stamp = 0;
  for (const s of order) {
    stamp++;
    const c = coverage[s];
    for (let j = 0; j < c.length; j += 2) {
      for (let i = c[j]; i <= c[j + 1]; i++) {
        const old = cls[i];
        if (stampOf[old] !== stamp) {
          // First interval of class `old` this set covers: split off a child (which maps to itself).
          const child = parent.length;
          parent.push(old);
          edge.push(s);
          if (child >= remap.length) {
            const grow = (a: Int32Array) => { const b = new Int32Array(a.length * 2); b.set(a); return b; };
            remap = grow(remap); stampOf = grow(stampOf);
          }
          stampOf[old] = stamp; remap[old] = child;
          stampOf[child] = stamp; remap[child] = child;
        }
        cls[i] = remap[old];
      }
    }
  }

  // 3. Final ids in depth-first order, for non-empty nodes; each node's subtree range.
  const nodes = parent.length;
  const used = new Uint8Array(nodes);
  for (let i = 0; i < n; i++) used[cls[i]] = 1;
  const childStart = new Int32Array(nodes + 1);
  for (let v = 1; v < nodes; v++) childStart[parent[v] + 1]++;
  for (let v = 0; v < nodes; v++) childStart[v + 1] += childStart[v];
  const children = new Int32Array(Math.max(0, nodes - 1));
  const fill = childStart.slice(0, nodes);
  for (let v = 1; v < nodes; v++) children[fill[parent[v]]++] = v;
  const finalId = new Int32Array(nodes).fill(-1);
  const subLo = new Int32Array(nodes), subHi = new Int32Array(nodes);
  let next = 0;
  // Iterative DFS (the tree can be as deep as there are sets).
  const stack: number[] = [0];
  const cursor = new Int32Array(nodes);
  subLo[0] = 0;
  if (used[0]) finalId[0] = next++;
  while (stack.length > 0) {
    const v = stack[stack.length - 1];
    const k = childStart[v] + cursor[v];
    if (k < childStart[v + 1]) {
      cursor[v]++;
      const c = children[k];
      subLo[c] = next;
      if (used[c]) finalId[c] = next++;
      stack.push(c);
    } else {
      subHi[v] = next - 1; // empty subtree: subHi < subLo
      stack.pop();
    }
  }

  // 4. Per set: the subtrees it split off, as merged ranges of final ids.
  const perSet: number[][] = sets.map(() => []);
  for (let v = 1; v < nodes; v++) if (subHi[v] >= subLo[v]) perSet[edge[v]].push(subLo[v], subHi[v]);
  const ranges = perSet.map((list) => rangesMerge([list]));

  // 5. Intervals with their final class, neighbours of one class merged.
  const words = family === 4 ? 1 : 4;
  let count = 0;
  for (let i = 0; i < n; i++) if (i === 0 || finalId[cls[i]] !== finalId[cls[i - 1]]) count++;
  const bounds = new Int32Array(count * words);
  const outCls = new Int32Array(count);
  let k = 0;
  for (let i = 0; i < n; i++) {
    if (i > 0 && finalId[cls[i]] === finalId[cls[i - 1]]) continue;
    startOf(i, bounds, k * words);
    outCls[k++] = finalId[cls[i]];
  }
  if (family === 6) {
    return { classes: { family, bounds, cls: outCls, count, intervals: count, hosts: EMPTY, hostMask: -1, classes: next }, ranges };
  }
  return { classes: hostsApart(bounds, outCls, count, next), ranges };
}

/** [lo, hi] pairs from several lists, sorted, overlapping or adjacent ones merged. */
export function rangesMerge(lists: ReadonlyArray<ArrayLike<number>>): Int32Array {
  const pairs: Array<[number, number]> = [];
  for (const l of lists) for (let j = 0; j < l.length; j += 2) pairs.push([l[j], l[j + 1]]);
  pairs.sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  for (const [lo, hi] of pairs) {
    if (out.length > 0 && lo <= out[out.length - 1] + 1) out[out.length - 1] = Math.max(out[out.length - 1], hi);
    else out.push(lo, hi);
  }
  return Int32Array.from(out);
}

const EMPTY = new Int32Array(0);

function hostSlot(addr: number, mask: number): number {
  return (Math.imul(addr, 0x9e3779b1) >>> 7) & mask;
}

/** IPv4: single-address intervals into the hash, the rest kept for the binary search. */
function hostsApart(bounds: Int32Array, cls: Int32Array, count: number, classes: number): AddressClasses {
  let hosts = 0;
  const single = (i: number) => i + 1 < count && bounds[i + 1] - bounds[i] === 1 && i > 0;
  for (let i = 0; i < count; i++) if (single(i)) hosts++;
  if (hosts < 16) return { family: 4, bounds, cls, count, intervals: count, hosts: EMPTY, hostMask: -1, classes };
  let size = 16;
  while (size < hosts * 2) size *= 2;
  const table = new Int32Array(size * 2).fill(-1);
  const wide = new Int32Array(count - hosts), wideCls = new Int32Array(count - hosts);
  let k = 0;
  for (let i = 0; i < count; i++) {
    if (!single(i)) { wide[k] = bounds[i]; wideCls[k++] = cls[i]; continue; }
    let slot = hostSlot(bounds[i], size - 1);
    while (table[2 * slot + 1] !== -1) slot = (slot + 1) & (size - 1);
    table[2 * slot] = bounds[i];
    table[2 * slot + 1] = cls[i];
  }
  return { family: 4, bounds: wide, cls: wideCls, count: k, intervals: count, hosts: table, hostMask: size - 1, classes };
}

/** The class of a biased IPv4 address. Hot path. */
export function classOf4(c: AddressClasses, addr: number): number {
  const mask = c.hostMask;
  if (mask >= 0) {
    const hosts = c.hosts;
    for (let slot = hostSlot(addr, mask); hosts[2 * slot + 1] !== -1; slot = (slot + 1) & mask) {
      if (hosts[2 * slot] === addr) return hosts[2 * slot + 1];
    }
  }
  const b = c.bounds;
  let lo = 0, hi = c.count - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (b[mid] <= addr) lo = mid; else hi = mid - 1;
  }
  return c.cls[lo];
}

/** The class of a biased IPv6 address in key[off .. off+3]. Hot path. */
export function classOf6(c: AddressClasses, key: Int32Array, off: number): number {
  const b = c.bounds;
  let lo = 0, hi = c.count - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    const o = mid * 4;
    // bounds[mid] <= address, compared word by word.
    let le = true;
    for (let w = 0; w < 4; w++) {
      const x = b[o + w], y = key[off + w];
      if (x !== y) { le = x < y; break; }
    }
    if (le) lo = mid; else hi = mid - 1;
  }
  return c.cls[lo];
}
