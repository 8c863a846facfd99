/**
 * Large bodies and files handled on the forwarding thread a slice per turn
 * of the event loop, so that frames are forwarded between slices.
 *
 * writeSliced: an HTTP body.
 * `next()` gives the next slice of text, or null at the end. Each slice goes
 * to the socket as bytes at once (a string waiting in the socket's queue
 * would be copied by every young-generation collection); a reader slower
 * than the writer is waited for ('drain'); a reader that leaves ends it.
 */
import { open, readFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { StringDecoder } from 'node:string_decoder';

export function writeSliced(res: ServerResponse, next: () => string | null): void {
  const step = (): void => {
    if (res.destroyed) return;
    const slice = next();
    if (slice === null) { res.end(); return; }
    if (res.write(Buffer.from(slice))) setImmediate(step);
    else res.once('drain', () => setImmediate(step));
  };
  setImmediate(step);
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
    if (a + TEXT_SLICE < bytes.length) await new Promise((resolve) => setImmediate(resolve));
  }
  parts.push(decoder.end());
  return parts.join('');
}
