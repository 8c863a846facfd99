/**
 * Ports: one per vNIC and the uplink, each a backend (io/ports.ts: TAP,
 * AF_PACKET, libpcap; or in memory) with its receive buffer and transmit
 * queue, and the port counters.
 *
 * Layout
 *   A port's receive buffer holds BATCH slots of `stride` bytes (one frame
 *   and a VLAN tag; with virtio-net headers a whole 64 KiB segment). Its
 *   transmit queue holds offsets and lengths into the buffer of the port a
 *   batch arrived on (frames are never copied on the way through), two
 *   batches' worth, emptied at the end of every batch (transmit.ts).
 *   Counters: Float64Array [port * PC_COUNT + PC.x], beside the outcome
 *   counters of the data plane.
 *
 * Lifecycle (dataplane.ts, control path)
 *   A port slot keeps its number while its vNIC lives: the vNIC's interface
 *   may be absent (AbsentPort: a guest that is off), attached again when it
 *   appears (every ATTACH_CHECK_MS), or replaced; a vNIC that leaves the
 *   host retires its slot, which the next new vNIC reuses.
 */
import { readFileSync } from 'node:fs';
import { NATIVE_LAYOUT } from '../io/native.js';
import type { PortIo, PortMode } from '../io/ports.js';
import { ReplyLimiter } from './reject.js';

export const BATCH = 64;
export const FRAME_STRIDE = 2048; // a 1514-byte frame and a VLAN tag fit; larger ones are dropped as malformed
/** With virtio-net headers a frame may be a whole TSO segment: 64 KiB and the header. */
export const OFFLOAD_STRIDE = 65536 + 64;

export interface PortSpec {
  /** Interface name. */
  name: string;
  mode: PortMode;
  /** The workload whose vNIC this is; null for the uplink. */
  workload: string | null;
}

/** Port slots a data plane has room for by default (vNICs come and go; a slot is reused). */
export const DEFAULT_MAX_PORTS = 1024;

/** Port counters besides outcomes: [port * PC_COUNT + PC.x]. */
export const enum PC {
  rxPackets = 0, rxBytes = 1, txPackets = 2, txBytes = 3, txDropped = 4, rxErrors = 5, replies = 6, attaches = 7,
  /** Frames for this port that found its transmit queue full (dropped; cannot happen while a queue holds two batches). */
  txQueueFull = 8,
  /** Replies (resets, ICMP errors) not sent because the port's reply budget was spent. */
  repliesLimited = 9,
}
export const PC_COUNT = 10;

/**
 * A port whose interface is not there (a guest that is off): reads nothing,
 * takes nothing. It stands in until the interface appears and is attached.
 */
export class AbsentPort implements PortIo {
  constructor(readonly name: string, readonly mode: PortMode, readonly vnetHdr: number) {}
  start(): void {}
  read(): number { return 0; }
  write(): number { return -NATIVE_LAYOUT.enxio; } // counted as dropped by flush()
  dropped(): number { return 0; }
  close(): void {}
}

/** The interface's index if it exists and is administratively up, else -1 (control path). */
export function ifindexIfUp(name: string): number {
  try {
    const flags = parseInt(readFileSync(`/sys/class/net/${name}/flags`, 'utf8'), 16);
    if ((flags & 1) === 0) return -1;
    return Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8'));
  } catch {
    return -1;
  }
}

/**
 * The default per-vNIC quota: 2 x capacity / (vNICs + 1). One vNIC may use
 * the whole table; with n vNICs one of them can hold at most 2/(n+1) of it,
 * so a VM that floods the table with connections leaves the others at least
 * (n-1)/(n+1) of it (seen without a quota: one VM's UDP flows filled 262,144
 * entries and the others' new connections failed). What it refuses is
 * counted (refused_quota, outcome quota).
 */
export function fairQuota(capacity: number, vnics: number): number {
  return Math.max(1, Math.floor((2 * capacity) / (Math.max(1, vnics) + 1)));
}

/** How often attached ports look for their interface (gone, back, replaced). */
export const ATTACH_CHECK_MS = 500;

export class Port {
  /** Its vNIC left this host (moved or deleted): closed, counters kept until the slot is reused. */
  retired = false;
  /** Bytes per receive slot: set by the backend in use (replaceIo), since only it knows if frames come with virtio-net headers. */
  stride: number;
  rxBuf: Uint8Array;
  readonly rxOff = new Int32Array(BATCH);
  readonly rxLen = new Int32Array(BATCH);
  readonly txOff = new Int32Array(BATCH * 2);
  readonly txLen = new Int32Array(BATCH * 2);
  txCount = 0;
  /** Where queued frames live: the arrival port's buffer of the batch being handled. */
  txBuf: Uint8Array;
  /** Interface index when attached (attach and pcap modes), -1 when absent. */
  ifindex = -1;
  /** Frames dropped by the backends this port had before its current one (a counter never goes back). */
  droppedBefore = 0;
  readonly limiter = new ReplyLimiter();
  constructor(readonly index: number, public spec: PortSpec, public io: PortIo, private readonly upFlags: Uint8Array) {
    this.stride = io.vnetHdr > 0 ? OFFLOAD_STRIDE : FRAME_STRIDE;
    this.rxBuf = new Uint8Array(BATCH * this.stride);
    this.txBuf = this.rxBuf;
  }
  /** Put in a new backend (attached, re-attached, absent); the old one's drops stay counted. */
  replaceIo(io: PortIo): void {
    if (io !== this.io) this.droppedBefore += this.io.dropped();
    this.io = io;
    // A backend with virtio-net headers hands over whole TSO segments: its slots must hold 64 KiB. Between
    // batches (control path), so no queue points into the buffer being replaced.
    const stride = io.vnetHdr > 0 ? OFFLOAD_STRIDE : FRAME_STRIDE;
    if (stride !== this.stride) {
      this.stride = stride;
      this.rxBuf = new Uint8Array(BATCH * stride);
      this.txBuf = this.rxBuf;
    }
  }
  /** Up: the decision path may send to it (kept in the switch's typed array). */
  get up(): boolean { return this.upFlags[this.index] === 1; }
  set up(v: boolean) { this.upFlags[this.index] = v ? 1 : 0; }
}
