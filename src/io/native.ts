/**
 * The N-API addon (native-bindings/), typed. One native call moves a batch
 * of frames between a descriptor and a caller-owned buffer; descriptors are
 * watched by libuv on the Node.js event loop. See native-bindings/src/tapwall.c
 * for the contract; NATIVE_LAYOUT below is this side's copy of its numbers,
 * and a test checks that the two agree.
 */
import { createRequire } from 'node:module';

export interface NativeAddon {
  tapOpen(name: string, flags: number, ownerUid?: number, netnsPath?: string): [number, string];
  /** The index of interface `name` in the network namespace at nsPath, 0 if it has none, -errno if it cannot be entered. */
  linkIndexIn(nsPath: string, name: string): number;
  packetOpen(ifname: string, useRing?: boolean, vnetHdr?: boolean): number;
  /** True when the AF_PACKET descriptor reads through a TPACKET_V3 ring (tests check the fast path is taken). */
  usesRing(fd: number): boolean;
  /** Frames 0..max-1 read into `stride`-byte slots of buf; the count, or -errno. */
  readBatch(fd: number, kind: number, buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, max: number, stride: number): number;
  /** Frames 0..count-1 written; how many the kernel took, or -errno. */
  writeBatch(fd: number, kind: number, buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, count: number): number;
  closeFd(fd: number): number;
  /** onEvent(events) on the event loop whenever fd is readable (events & uvReadable), or -errno once the poll fails. */
  watch(fd: number, onEvent: (events: number) => void): object;
  unwatch(handle: object): void;
  /** Frames the kernel dropped on an AF_PACKET socket since the last call, or -errno. */
  packetDrops(fd: number): number;
  /** A MAP_SHARED mapping of a file created at `path` (0600), its blocks reserved first; throws ENOSPC/EMAPFILE. */
  mapFile(path: string, bytes: number): ArrayBuffer;
  /** Become uid/gid keeping only these capabilities (numbers) on the calling thread; throws EPRIVDROP. */
  dropPrivileges(uid: number, gid: number, keep: number[]): void;
  /** The CPUs thread `tid` (0: the calling one) may run on; throws ECPUS. */
  threadCpus(tid: number): number[];
  /** Restrict thread `tid` of this process to `cpus`: 0, or -errno. */
  threadCpusSet(tid: number, cpus: number[]): number;
  /**
   * A YAML document as JSON text (libyaml reads it; scalars mean what
   * js-yaml's core schema makes them), or null for anything it leaves to
   * js-yaml: errors, anchors, aliases, tags, several documents, repeated
   * keys, numbers JSON would write otherwise. native-bindings/src/yaml.c.
   */
  yamlToJson(text: string): string | null;
  /**
   * The policy loader's checks of a text before it is parsed, in one pass:
   * 0 nothing to report; 1 textProblem may have something (indentation or
   * brackets past maxNesting); for JSON (asJson) also 2 a key repeated in
   * one object or brackets past maxNesting, 3 a key written with an escape
   * (the JavaScript scan decides). native-bindings/src/text.c.
   */
  policyTextScan(text: string, maxNesting: number, asJson: boolean): 0 | 1 | 2 | 3;
  /** The two paths trade places in one step (renameat2 RENAME_EXCHANGE): 0, or -errno (-EINVAL where the file system cannot). */
  renameExchange(from: string, to: string): number;
  layout: Record<string, number>;
}

export const NATIVE_LAYOUT = {
  maxBatch: 256,
  kindTap: 0,
  kindPacket: 1,
  uvReadable: 1,
  /** errno values the TypeScript side returns itself (a port with no interface, a libpcap send that failed). */
  eio: 5,
  enxio: 6,
  /** struct virtio_net_hdr, in front of every frame on a TAP opened with TAP_VNET_HDR. */
  vnetHdrSize: 10,
} as const;

export const TAP_PERSIST = 1, TAP_VNET_HDR = 2;

let addon: NativeAddon | null = null;

/** Load the addon (built by `npm ci`); throws a clear error if it is missing. */
export function native(): NativeAddon {
  if (addon) return addon;
  const require = createRequire(import.meta.url);
  try {
    addon = require('tapwall-native') as NativeAddon;
  } catch (e) {
    throw new Error(`tapwall's native addon is not built (run npm ci): ${(e as Error).message}`);
  }
  for (const [k, v] of Object.entries(NATIVE_LAYOUT)) {
    if (addon.layout[k] !== v) throw new Error(`native addon layout mismatch: ${k} is ${addon.layout[k]} there, ${v} here: rebuild it`);
  }
  return addon;
}

let optional: NativeAddon | null | undefined;

/** The addon if it is built, else null (for what has a way without it: the policy loader's YAML). */
export function nativeIfBuilt(): NativeAddon | null {
  if (optional === undefined) {
    try { optional = native(); } catch { optional = null; }
  }
  return optional;
}
