/**
 * Port backends: how tapwall reaches a vNIC or an uplink, behind one
 * interface the data plane calls once per batch (never per frame):
 *   tap     tapwall opens the TAP device itself (TUNSETIFF, IFF_TAP|IFF_NO_PI);
 *           the kernel side of the TAP is the workload's NIC.
 *   attach  an AF_PACKET socket on an interface another program owns (the host
 *           side of a QEMU guest's TAP, a veth).
 *   pcap    the same through libpcap (the `cap` package), for systems where the
 *           native addon does not fit. libpcap hands over one frame per
 *           callback: they are gathered and handed on as a batch, at the cost
 *           of one copy per frame in (within one buffer: no view made per
 *           frame) and one libpcap call per frame out (through a view made
 *           once per slot).
 * read() and write() return a count, or -errno for a failure worth stopping
 * the port for; EAGAIN is a short count.
 */
import { createRequire } from 'node:module';
import { readdirSync, readlinkSync } from 'node:fs';
import { native, NATIVE_LAYOUT, TAP_PERSIST, TAP_VNET_HDR } from './native.js';

export type PortMode = 'tap' | 'attach' | 'pcap';


export interface PortIo {
  readonly name: string;
  readonly mode: PortMode;
  /** Bytes of virtio-net header in front of each frame (0 without offload). */
  readonly vnetHdr: number;
  /** Call `onReadable` on the event loop whenever frames may be waiting (or -errno when the port fails). */
  start(onReadable: (events: number) => void): void;
  /** Up to `max` frames into `stride`-byte slots of buf; offsets[i], lengths[i] say where. */
  read(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, max: number, stride: number): number;
  /** Frames 0..count-1 of buf at offsets/lengths. */
  write(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, count: number): number;
  /** Frames the backend dropped before tapwall could read them, since it opened (control path: read at scrape time). */
  dropped(): number;
  close(): void;
}

/** TAP and AF_PACKET: a non-blocking descriptor, batches through the addon, watched by libuv. */
class NativePort implements PortIo {
  private watch: object | null = null;
  constructor(readonly name: string, readonly mode: PortMode, private readonly kind: number, private readonly fd: number, readonly vnetHdr = 0) {}

  start(onReadable: (events: number) => void): void {
    this.watch = native().watch(this.fd, (events) => {
      if (events < 0) this.stopWatching();
      onReadable(events);
    });
  }

  read(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, max: number, stride: number): number {
    const n = native().readBatch(this.fd, this.kind, buf, offsets, lengths, max, stride);
    if (n < 0) this.stopWatching();
    return n;
  }

  write(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, count: number): number {
    return native().writeBatch(this.fd, this.kind, buf, offsets, lengths, count);
  }

  private drops = 0;
  dropped(): number {
    // AF_PACKET: the kernel's count of frames its ring had no room for (reset by each read); a TAP drops nothing itself.
    if (this.kind === NATIVE_LAYOUT.kindPacket) {
      const d = native().packetDrops(this.fd);
      if (d > 0) this.drops += d;
    }
    return this.drops;
  }

  private stopWatching(): void {
    if (this.watch) native().unwatch(this.watch);
    this.watch = null;
  }

  close(): void {
    // Unwatch first: libuv must never poll a closed descriptor.
    this.stopWatching();
    native().closeFd(this.fd);
  }
}

interface CapHandle {
  open(device: string, filter: string, bufSize: number, buffer: Buffer): string;
  setMinBytes?(n: number): void;
  on(event: 'packet', cb: (nbytes: number, truncated: boolean) => void): void;
  send(buffer: Buffer, size: number): void;
  close(): void;
}

/** libpcap through `cap`: frames arrive one per callback and are gathered into a pending batch. */
class PcapPort implements PortIo {
  readonly mode = 'pcap' as const;
  readonly vnetHdr = 0;
  private readonly cap: CapHandle;
  /**
   * libpcap's capture buffer (the last 65,535 bytes) and the pending batch
   * (`slots` slots of `stride` bytes) in one buffer, so that a frame moves
   * from one to the other with copyWithin: set() from another buffer needs a
   * view of the frame, a new object per frame.
   */
  private readonly whole: Buffer;
  private readonly frame: Buffer;
  /** Slot i of the pending batch, whole (made once: read() copies a slot without making a view). */
  private readonly slotViews: Uint8Array[] = [];
  private readonly pendingLen: Int32Array;
  private pendingCount = 0;
  private scheduled = false;
  /** Frames libpcap handed over that the pending queue had no room for, or cut short. */
  private drops = 0;
  private onReadable: ((events: number) => void) | null = null;
  /** Buffer views for cap.send, by the buffer and offset they start at, made once each (a port's slots are few). */
  private readonly sendViews = new WeakMap<ArrayBufferLike, Map<number, Buffer>>();
  private readonly wake = () => { this.scheduled = false; this.onReadable?.(1); };

  constructor(readonly name: string, private readonly slots = 256, private readonly stride = 2048) {
    const require = createRequire(import.meta.url);
    const { Cap } = require('cap') as { Cap: new () => CapHandle };
    this.cap = new Cap();
    this.whole = Buffer.alloc(slots * stride + 65535);
    this.frame = this.whole.subarray(slots * stride);
    for (let i = 0; i < slots; i++) this.slotViews.push(this.whole.subarray(i * stride, (i + 1) * stride));
    this.pendingLen = new Int32Array(slots);
    // `inbound`: libpcap would otherwise hand back the frames tapwall itself sends out of this port.
    const link = this.cap.open(name, 'inbound', 4 << 20, this.frame);
    if (link !== 'ETHERNET') {
      this.cap.close();
      throw Object.assign(new Error(`${name}: link type ${link}, not Ethernet`), { code: 'ELINKTYPE' });
    }
    this.cap.setMinBytes?.(0);
    this.cap.on('packet', (nbytes, truncated) => this.onPacket(nbytes, truncated));
  }

  private onPacket(nbytes: number, truncated: boolean): void {
    if (this.pendingCount === this.slots || truncated || nbytes > this.stride) { this.drops++; return; }
    const at = this.slots * this.stride;
    this.whole.copyWithin(this.pendingCount * this.stride, at, at + nbytes);
    this.pendingLen[this.pendingCount++] = nbytes;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.wake);
    }
  }

  start(onReadable: (events: number) => void): void {
    this.onReadable = onReadable;
  }

  dropped(): number {
    return this.drops;
  }

  read(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, max: number, stride: number): number {
    const n = Math.min(max, this.pendingCount);
    for (let i = 0; i < n; i++) {
      const len = this.pendingLen[i];
      // The whole slot when the caller's are as large (they are: both FRAME_STRIDE); else the frame, through a view.
      if (stride >= this.stride) buf.set(this.slotViews[i], i * stride);
      else buf.set(this.slotViews[i].subarray(0, len), i * stride);
      offsets[i] = i * stride;
      lengths[i] = len;
    }
    // Keep what did not fit, in order.
    if (n < this.pendingCount) {
      this.whole.copyWithin(0, n * this.stride, this.pendingCount * this.stride);
      this.pendingLen.copyWithin(0, n, this.pendingCount);
    }
    this.pendingCount -= n;
    return n;
  }

  write(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, count: number): number {
    let views = this.sendViews.get(buf.buffer);
    if (views === undefined) { views = new Map(); this.sendViews.set(buf.buffer, views); }
    for (let i = 0; i < count; i++) {
      const at = buf.byteOffset + offsets[i];
      let view = views.get(at);
      if (view === undefined) { view = Buffer.from(buf.buffer, at, buf.byteOffset + buf.length - at); views.set(at, view); }
      try {
        this.cap.send(view, lengths[i]);
      } catch {
        return i > 0 ? i : -NATIVE_LAYOUT.eio;
      }
    }
    return count;
  }

  close(): void {
    this.onReadable = null;
    this.cap.close();
  }
}

export interface PortOptions {
  /** Keep the TAP device after tapwall closes it (TUNSETPERSIST), as libvirt does. */
  persist?: boolean;
  /** The user that may open the TAP afterwards (TUNSETOWNER). */
  ownerUid?: number;
  /**
   * Virtio-net headers (IFF_VNET_HDR on TAPs, PACKET_VNET_HDR on AF_PACKET)
   * with checksum and TSO offload: every frame carries a 10-byte header and
   * may be a 64 KiB segment, passed through to the other port as is (the
   * receiving kernel finishes it).
   */
  offload?: boolean;
}

/**
 * The network namespace that holds interface `name` now, if not this
 * process's own: a persistent TAP whose kernel side was moved into a VM's or
 * container's namespace stays there when tapwall exits, and a restart must
 * attach to it there rather than make a new one here. Looks in the named
 * namespaces (/run/netns) and those of running processes. Control path.
 */
export function netnsHolding(name: string): string | null {
  const n = native();
  if (n.linkIndexIn('/proc/self/ns/net', name) > 0) return null;
  const seen = new Set<string>([readlinkSafe('/proc/self/ns/net')]);
  const candidates: string[] = [];
  try { for (const f of readdirSync('/run/netns')) candidates.push(`/run/netns/${f}`); } catch { /* none */ }
  try { for (const pid of readdirSync('/proc')) if (/^\d+$/.test(pid)) candidates.push(`/proc/${pid}/ns/net`); } catch { /* none */ }
  for (const path of candidates) {
    const id = path.startsWith('/proc/') ? readlinkSafe(path) : path;
    if (id === '' || seen.has(id)) continue;
    seen.add(id);
    if (n.linkIndexIn(path, name) > 0) return path;
  }
  return null;
}

function readlinkSafe(path: string): string {
  try { return readlinkSync(path); } catch { return ''; }
}

export function portOpen(name: string, mode: PortMode, opts: PortOptions = {}): PortIo {
  if (mode === 'tap') {
    // A persistent TAP from before a restart may sit in a VM's namespace: attach to it there.
    const netns = opts.persist ? netnsHolding(name) : null;
    const [fd, actual] = native().tapOpen(name, (opts.persist ? TAP_PERSIST : 0) | (opts.offload ? TAP_VNET_HDR : 0), opts.ownerUid ?? -1, netns ?? undefined);
    return new NativePort(actual, mode, NATIVE_LAYOUT.kindTap, fd, opts.offload ? NATIVE_LAYOUT.vnetHdrSize : 0);
  }
  if (mode === 'attach') {
    return new NativePort(name, mode, NATIVE_LAYOUT.kindPacket, native().packetOpen(name, true, opts.offload === true), opts.offload ? NATIVE_LAYOUT.vnetHdrSize : 0);
  }
  return new PcapPort(name);
}
