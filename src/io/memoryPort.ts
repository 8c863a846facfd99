/**
 * An in-memory port: the seam (DataplaneOptions.portOpener) through which
 * tests and benchmarks run the real data plane without devices or root.
 * Frames queued with `push` are handed over on the next read (at most one
 * batch at a time); frames the data plane writes are kept in `sent` (copied,
 * since the data plane reuses its buffers) unless `keep` is false.
 */
import type { PortIo } from './ports.js';

export class MemoryPort implements PortIo {
  readonly mode = 'tap' as const;
  readonly vnetHdr = 0;
  readonly sent: Uint8Array[] = [];
  sentCount = 0;
  private readonly queue: Uint8Array[] = [];
  constructor(readonly name: string, private readonly keep = true) {}

  /** Queue frames for the data plane to read. */
  push(...frames: Uint8Array[]): void {
    for (const f of frames) this.queue.push(f);
  }

  /** Queue one frame (no argument array). */
  pushFrame(frame: Uint8Array): void {
    this.queue.push(frame);
  }

  start(): void {}

  read(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, max: number, stride: number): number {
    let n = 0;
    while (n < max && this.queue.length > 0) {
      const f = this.queue.shift()!;
      const len = Math.min(f.length, stride);
      buf.set(len === f.length ? f : f.subarray(0, len), n * stride);
      offsets[n] = n * stride;
      // A frame longer than a slot is handed over as it would be by a device: its true length, truncated data.
      lengths[n] = f.length;
      n++;
    }
    return n;
  }

  write(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, count: number): number {
    this.sentCount += count;
    if (this.keep) for (let i = 0; i < count; i++) this.sent.push(buf.slice(offsets[i], offsets[i] + lengths[i]));
    return count;
  }

  dropped(): number {
    return 0;
  }

  close(): void {}
}
