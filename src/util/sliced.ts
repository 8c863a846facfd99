/**
 * Large bodies and files handled on the forwarding thread a slice per turn
 * of the event loop, so that frames are forwarded between slices.
 *
 * A SlicedText gives its next slice, or null at the end (the metrics, the
 * rule list, the rule analytics' file). writeSliced writes one to a stream
 * (an HTTP response, a file) a slice per turn: each slice goes out as bytes
 * at once (a string waiting in the stream's queue would be copied by every
 * young-generation collection); a reader slower than the writer is waited
 * for ('drain'); a stream destroyed meanwhile (a reader that left, an error,
 * a writer that gave up) ends it.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { open, readFile } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';

export interface SlicedText { next(): string | null }

/** All of a SlicedText that is left, at once (for callers that want one text). */
export function slicedAll(text: SlicedText): string {
  let out = '';
  for (let s = text.next(); s !== null; s = text.next()) out += s;
  return out;
}

/** Write `text` to `out` a slice per turn and end it; resolves true once all is written, false if `out` was destroyed first. */
export function writeSliced(out: Writable, text: SlicedText): Promise<boolean> {
  return new Promise((resolve) => {
    const step = (): void => {
      if (out.destroyed) { resolve(false); return; }
      const slice = text.next();
      if (out.destroyed) { resolve(false); return; }
      if (slice === null) { out.end(() => resolve(!out.errored)); return; }
      if (out.write(Buffer.from(slice))) setImmediate(step);
      else out.once('drain', () => setImmediate(step));
    };
    // A stream destroyed while waiting for 'drain' never drains.
    out.once('close', () => { if (!out.writableFinished) resolve(false); });
    setImmediate(step);
  });
}

/** Bytes the kernel maps at a time: one write in each makes it present. */
export const PAGE_BYTES = 4096;
/** Pages made present per turn: at 13 µs a first touch on this VM (0.1-1 µs on bare metal), under a millisecond. */
const PAGES_PER_TURN = 64;

/**
 * Make every page of `arrays` present, a few pages per turn: a write of 0
 * into each (they are fresh, so they stay all zero). Memory that the
 * forwarding thread will fill in one turn (a swap's new rule counters) is
 * touched ahead of it, so that the turn does not take every page fault at
 * once (3.2 MB of counters at 100,000 rules: 10 ms of faults in one turn
 * here).
 */
export async function touchSliced(arrays: readonly ArrayBufferView[]): Promise<void> {
  let pages = 0;
  for (const a of arrays) {
    const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    for (let at = 0; at < bytes.length; at += PAGE_BYTES) {
      bytes[at] = 0;
      if (++pages % PAGES_PER_TURN === 0) await nextTurn();
    }
  }
}

/** Characters of a text encoded, and bytes decoded, per turn: a quarter to half a millisecond here. */
export const TEXT_SLICE = 256 * 1024;

/**
 * Write `text` to a new file `path` (mode `mode`) a slice per turn: each
 * slice is encoded, given to `onSlice` (a hash), and written before the
 * next. A slice never splits a surrogate pair (its halves alone would be
 * encoded as two replacement characters). Resolves with the bytes written.
 */
export async function writeTextSliced(path: string, text: string, mode: number, onSlice?: (bytes: Buffer) => void): Promise<number> {
  const file = await open(path, 'w', mode);
  let bytes = 0;
  try {
    for (let a = 0; a < text.length;) {
      let b = Math.min(text.length, a + TEXT_SLICE);
      if (b < text.length && (text.charCodeAt(b - 1) & 0xfc00) === 0xd800) b--;
      const slice = Buffer.from(text.slice(a, b), 'utf8');
      onSlice?.(slice);
      await file.write(slice);
      bytes += slice.length;
      a = b;
    }
  } finally {
    await file.close();
  }
  return bytes;
}

/** Read a UTF-8 text file, decoding a slice per turn (a 10 MB file decoded at once is one long turn). */
export async function readTextSliced(path: string): Promise<string> {
  const bytes = await readFile(path);
  const decoder = new StringDecoder('utf8');
  const parts: string[] = [];
  for (let a = 0; a < bytes.length; a += TEXT_SLICE) {
    parts.push(decoder.write(bytes.subarray(a, a + TEXT_SLICE)));
    if (a + TEXT_SLICE < bytes.length) await nextTurn();
  }
  parts.push(decoder.end());
  return parts.join('');
}
