/**
 * Appending to a log whole or not at all (the audit log, the flow log): a
 * write that a full or read-only disk refuses part way is cut back to the
 * size the file had, so a reader never meets half a line.
 */
import { fstatSync, ftruncateSync, writeSync } from 'node:fs';

/** Append `bytes` to the file open at `fd`; on failure cut it back and rethrow the error. */
export function appendWhole(fd: number, bytes: Uint8Array): void {
  const size = fstatSync(fd).size;
  try {
    for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off);
  } catch (e) {
    try { ftruncateSync(fd, size); } catch { /* the file stays as the disk left it */ }
    throw e;
  }
}
