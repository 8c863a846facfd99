/**
 * The transmit stage: frames a batch forwards are queued on the ports they
 * go to, replies are written and queued on the port they answer, and at the
 * end of the batch each port with a queue makes one write.
 *
 * Design
 *   Queues hold offsets into the arrival port's receive buffer: nothing is
 *   copied, so a queue must be flushed before that port reads again (the
 *   data plane flushes at the end of every batch). A group packet is queued
 *   on every port that takes it, the same bytes each time. A reply is
 *   written over the rejected frame's own slot (reject.ts), which nothing
 *   else reads. Every frame that does not leave is counted with its reason:
 *   a full queue (txQueueFull), a port that is down or a write that failed
 *   (txDropped), what the kernel did not take (txDropped), a reply over its
 *   port's rate (repliesLimited).
 *
 * Who may call what: the data plane's batch loop; allocation-free.
 */
import { rejectWrite } from './reject.js';
import { PC, PC_COUNT, type Port } from './ports.js';

/** Queue buf[off .. off+len) of src's receive buffer on dest; a full queue is a counted drop. */
export function txEnqueue(counters: Float64Array, dest: Port, src: Port, off: number, len: number): void {
  if (dest.txCount === dest.txOff.length) { counters[dest.index * PC_COUNT + PC.txQueueFull]++; return; }
  dest.txBuf = src.rxBuf;
  dest.txOff[dest.txCount] = off;
  dest.txLen[dest.txCount] = len;
  dest.txCount++;
}

/** Answer frame i of port's batch (rejected or cut, parsed in pkt) out of its own port, written over the frame itself. */
export function txReply(counters: Float64Array, port: Port, i: number, pkt: Int32Array, now: number): void {
  if (!port.limiter.take(now)) { counters[port.index * PC_COUNT + PC.repliesLimited]++; return; }
  const hdr = port.io.vnetHdr, start = port.rxOff[i];
  const len = rejectWrite(port.rxBuf, start + hdr, port.rxLen[i] - hdr, pkt);
  if (len === 0) return;
  // A zeroed virtio-net header: a whole frame with its checksums done.
  if (hdr > 0) port.rxBuf.fill(0, start, start + hdr);
  counters[port.index * PC_COUNT + PC.replies]++;
  txEnqueue(counters, port, port, start, hdr + len);
}

/** One write per port with frames queued; what does not leave is counted. */
export function txFlush(counters: Float64Array, ports: readonly Port[], onError: ((port: string, message: string) => void) | undefined): void {
  for (let p = 0; p < ports.length; p++) {
    const dest = ports[p];
    if (dest.txCount === 0) continue;
    const count = dest.txCount;
    dest.txCount = 0;
    const base = dest.index * PC_COUNT;
    if (!dest.up) { counters[base + PC.txDropped] += count; continue; }
    const sent = dest.io.write(dest.txBuf, dest.txOff, dest.txLen, count);
    if (sent < 0) {
      counters[base + PC.txDropped] += count;
      onError?.(dest.spec.name, `write failed: errno ${-sent}`);
      continue;
    }
    counters[base + PC.txPackets] += sent;
    for (let k = 0; k < sent; k++) counters[base + PC.txBytes] += dest.txLen[k];
    // EAGAIN / ENOBUFS: what the kernel did not take is dropped and counted, not retried in a loop.
    if (sent < count) counters[base + PC.txDropped] += count - sent;
  }
}
