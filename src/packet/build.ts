/**
 * Building frames: Ethernet + IPv4/IPv6 + TCP/UDP/ICMP/ICMPv6, with correct
 * checksums, so that a real kernel accepts them. Used by tests and
 * benchmarks, and by the data plane for the replies it sends (TCP resets and
 * ICMP errors for `reject`). Control path: it allocates the frame it returns.
 */
import { TCP_ACK } from './parse.js';

export interface FrameSpec {
  srcMac?: string;
  dstMac?: string;
  /** An outer 802.1Q tag. */
  vlan?: number;
  family: 4 | 6;
  /** Addresses as text (10.0.0.1, fd00::1). */
  src: string;
  dst: string;
  proto: number;
  sport?: number;
  dport?: number;
  /** TCP flags (TCP_SYN | TCP_ACK ...). */
  flags?: number;
  seq?: number;
  ack?: number;
  /** ICMP/ICMPv6 type and code; for echo, `id` and `seqNo`. */
  icmpType?: number;
  icmpCode?: number;
  id?: number;
  /** L4 payload (for ICMP errors: the quoted packet, from its IP header on). */
  payload?: Uint8Array;
  /** ICMP/ICMPv6: the whole message after type, code and checksum (replaces id/seq and payload). */
  icmpBody?: Uint8Array;
  ttl?: number;
  /** IPv4: set More Fragments / a fragment offset (in 8-byte units). */
  moreFragments?: boolean;
  fragmentOffset?: number;
  ipId?: number;
}

export function macBytes(mac: string): number[] {
  return mac.split(':').map((h) => parseInt(h, 16));
}

export function ipv4Bytes(text: string): number[] {
  return text.split('.').map(Number);
}

export function ipv6Bytes(text: string): number[] {
  let [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const fill = tail === undefined ? [] : Array(8 - h.length - t.length).fill('0');
  const groups = [...h, ...fill, ...t];
  if (groups.length !== 8) throw new Error(`bad IPv6 address ${text}`);
  return groups.flatMap((g) => { const v = parseInt(g, 16); return [v >> 8, v & 255]; });
}

function sum16(bytes: ArrayLike<number>, start: number, end: number, acc = 0): number {
  for (let i = start; i < end; i += 2) acc += (bytes[i] << 8) | (i + 1 < end ? bytes[i + 1] : 0);
  return acc;
}

function fold(acc: number): number {
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  return ~acc & 0xffff;
}

/** The IP packet (no Ethernet header) for a spec. */
export function ipPacket(spec: FrameSpec): Uint8Array {
  const payload = spec.payload ?? new Uint8Array(0);
  const proto = spec.proto;
  let l4: number[];
  if (proto === 6) {
    const seq = spec.seq ?? 1000, ack = spec.ack ?? ((spec.flags ?? 0) & TCP_ACK ? 1 : 0);
    l4 = [
      (spec.sport ?? 0) >> 8, (spec.sport ?? 0) & 255, (spec.dport ?? 0) >> 8, (spec.dport ?? 0) & 255,
      (seq >>> 24) & 255, (seq >>> 16) & 255, (seq >>> 8) & 255, seq & 255,
      (ack >>> 24) & 255, (ack >>> 16) & 255, (ack >>> 8) & 255, ack & 255,
      0x50, spec.flags ?? 0, 0xff, 0xff, 0, 0, 0, 0,
    ];
  } else if (proto === 17 || proto === 132) {
    const len = 8 + payload.length;
    l4 = [(spec.sport ?? 0) >> 8, (spec.sport ?? 0) & 255, (spec.dport ?? 0) >> 8, (spec.dport ?? 0) & 255, len >> 8, len & 255, 0, 0];
  } else if ((proto === 1 || proto === 58) && spec.icmpBody) {
    l4 = [spec.icmpType ?? 8, spec.icmpCode ?? 0, 0, 0, ...spec.icmpBody];
  } else if (proto === 1 || proto === 58) {
    const id = spec.id ?? 0;
    l4 = [spec.icmpType ?? 8, spec.icmpCode ?? 0, 0, 0, id >> 8, id & 255, 0, 1];
    if (spec.payload && (spec.icmpType ?? 8) !== 8 && (spec.icmpType ?? 8) !== 128 && (spec.icmpType ?? 8) !== 0 && (spec.icmpType ?? 8) !== 129) {
      l4 = [spec.icmpType ?? 3, spec.icmpCode ?? 0, 0, 0, 0, 0, 0, 0]; // errors: 4 unused bytes
    }
  } else l4 = [];
  const l4len = l4.length + payload.length;
  const srcB = spec.family === 4 ? ipv4Bytes(spec.src) : ipv6Bytes(spec.src);
  const dstB = spec.family === 4 ? ipv4Bytes(spec.dst) : ipv6Bytes(spec.dst);
  const hdrLen = spec.family === 4 ? 20 : 40;
  const out = new Uint8Array(hdrLen + l4len);
  if (spec.family === 4) {
    const total = 20 + l4len;
    const frag = (spec.moreFragments ? 0x2000 : 0) | (spec.fragmentOffset ?? 0);
    out.set([0x45, 0, total >> 8, total & 255, (spec.ipId ?? 1) >> 8, (spec.ipId ?? 1) & 255, frag >> 8, frag & 255, spec.ttl ?? 64, proto, 0, 0, ...srcB, ...dstB]);
    const c = fold(sum16(out, 0, 20));
    out[10] = c >> 8; out[11] = c & 255;
  } else {
    out.set([0x60, 0, 0, 0, l4len >> 8, l4len & 255, proto, spec.ttl ?? 64, ...srcB, ...dstB]);
  }
  out.set(l4, hdrLen);
  out.set(payload, hdrLen + l4.length);
  // L4 checksum over the pseudo-header (not for IPv4 ICMP, which sums only itself).
  const csumAt = proto === 6 ? 16 : proto === 17 ? 6 : proto === 1 || proto === 58 ? 2 : -1;
  if (csumAt >= 0 && !(spec.family === 4 && (spec.fragmentOffset ?? 0) > 0)) {
    let acc = 0;
    if (!(proto === 1 && spec.family === 4)) {
      acc = sum16(srcB, 0, srcB.length, acc);
      acc = sum16(dstB, 0, dstB.length, acc);
      acc += proto + l4len;
    }
    acc = sum16(out, hdrLen, hdrLen + l4len, acc);
    let c = fold(acc);
    if (proto === 17 && c === 0) c = 0xffff;
    out[hdrLen + csumAt] = c >> 8;
    out[hdrLen + csumAt + 1] = c & 255;
  }
  return out;
}

/** A whole Ethernet frame for a spec. */
export function frameBuild(spec: FrameSpec): Uint8Array {
  const ip = ipPacket(spec);
  const head: number[] = [...macBytes(spec.dstMac ?? '02:00:00:00:00:02'), ...macBytes(spec.srcMac ?? '02:00:00:00:00:01')];
  if (spec.vlan !== undefined) head.push(0x81, 0x00, (spec.vlan >> 8) & 0x0f, spec.vlan & 255);
  head.push(...(spec.family === 4 ? [0x08, 0x00] : [0x86, 0xdd]));
  const out = new Uint8Array(head.length + ip.length);
  out.set(head);
  out.set(ip, head.length);
  return out;
}

/** An Ethernet/IPv4 ARP frame (request: op 1, reply: op 2), padded with zeros to 60 bytes. */
export function arpFrame(spec: { srcMac: string; dstMac?: string; op: 1 | 2; sha?: string; spa: string; tha?: string; tpa: string; vlan?: number }): Uint8Array {
  const head: number[] = [...macBytes(spec.dstMac ?? 'ff:ff:ff:ff:ff:ff'), ...macBytes(spec.srcMac)];
  if (spec.vlan !== undefined) head.push(0x81, 0x00, (spec.vlan >> 8) & 0x0f, spec.vlan & 255);
  head.push(0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, spec.op,
    ...macBytes(spec.sha ?? spec.srcMac), ...ipv4Bytes(spec.spa), ...macBytes(spec.tha ?? '00:00:00:00:00:00'), ...ipv4Bytes(spec.tpa));
  while (head.length < 60) head.push(0);
  return Uint8Array.from(head);
}

/** The solicited-node multicast group of an IPv6 address (ff02::1:ffXX:XXXX), as text. */
export function solicitedNode(addr: string): string {
  const b = ipv6Bytes(addr);
  return `ff02::1:ff${b[13].toString(16).padStart(2, '0')}:${((b[14] << 8) | b[15]).toString(16)}`;
}

/** The Ethernet multicast MAC of an IPv6 multicast address (33:33 and its last four bytes). */
export function multicastMac6(addr: string): string {
  const b = ipv6Bytes(addr);
  return ['33', '33', ...b.slice(12).map((x) => x.toString(16).padStart(2, '0'))].join(':');
}

/**
 * A neighbour solicitation (135) or advertisement (136) with hop limit 255:
 * target address, one link-layer address option (the sender's MAC unless
 * `lla` says otherwise; null for none), NA flags (router 0x80, solicited 0x40,
 * override 0x20).
 */
export function ndFrame(spec: { type: 135 | 136; srcMac: string; dstMac?: string; src: string; dst: string; target: string; lla?: string | null; flags?: number; vlan?: number; extra?: number[] }): Uint8Array {
  const body = [spec.type === 136 ? spec.flags ?? 0 : 0, 0, 0, 0, ...ipv6Bytes(spec.target)];
  const lla = spec.lla === undefined ? spec.srcMac : spec.lla;
  if (lla !== null) body.push(spec.type === 135 ? 1 : 2, 1, ...macBytes(lla));
  if (spec.extra) body.push(...spec.extra);
  return frameBuild({
    family: 6, proto: 58, src: spec.src, dst: spec.dst, srcMac: spec.srcMac, vlan: spec.vlan,
    dstMac: spec.dstMac ?? (spec.dst.startsWith('ff') ? multicastMac6(spec.dst) : undefined),
    icmpType: spec.type, icmpCode: 0, icmpBody: Uint8Array.from(body), ttl: 255,
  });
}
