/**
 * Writing a large HTTP body from the forwarding thread: a slice per turn of
 * the event loop, so that frames are forwarded between slices.
 *
 * `next()` gives the next slice of text, or null at the end. Each slice goes
 * to the socket as bytes at once (a string waiting in the socket's queue
 * would be copied by every young-generation collection); a reader slower
 * than the writer is waited for ('drain'); a reader that leaves ends it.
 */
import type { ServerResponse } from 'node:http';

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
