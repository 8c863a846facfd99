/**
 * Frame fuzzing of the data plane, for the test suite (a few hundred
 * thousand frames) and as a long run (`tapwall bench fuzz --frames N --seed S`).
 *
 * Frames of every kind the parser and the switch distinguish are generated
 * from a seed (framesOfEveryKind: IPv4/IPv6 TCP with any flags, UDP, SCTP,
 * GRE, ICMP echo/errors/other, ND, MLD, router messages, ARP requests,
 * replies, probes, gratuitous ARP, LLDP and unknown EtherTypes, VLAN and
 * QinQ tags, IPv4 options, IPv6 extension chains, fragments; good and
 * spoofed sources, every kind of destination MAC) and then mutated (cut at
 * every header boundary, lengths and header bytes corrupted, bytes
 * appended). They run through the real data plane on in-memory ports under
 * a default-drop policy that allows one service (a -> b udp/5353) and cuts
 * everything else off with an explicit drop.
 *
 * An independent checker (its own little decoder, not tapwall's parser)
 * looks at every frame the data plane sends and fails the run if it is not
 * part of an allowed connection of that service: a request a -> b to 5353,
 * its replies, an ICMP error quoting it, a later fragment of an allowed
 * datagram, address resolution between a and b, or a VM's announcement of
 * its own address to the uplink. After the run, on every port the outcome
 * counters must add up to the frames received.
 */
import { Dataplane, PC, PC_COUNT } from '../src/datapath/dataplane.js';
import type { PortIo } from '../src/io/ports.js';
import { arpFrame, frameBuild, ndFrame, solicitedNode, type FrameSpec } from '../src/packet/build.js';
import { OUTCOME_COUNT, OUTCOME_NAMES } from '../src/packet/verdict.js';
import { policyCompile } from '../src/policy/compile.js';
import { policyParse } from '../src/policy/load.js';
import { addressText } from '../src/policy/addresses.js';
import { linkLocalOf } from '../src/policy/addresses.js';
import { prng } from '../tools/prng.js';

export const FUZZ_MACS = { a: '02:5a:00:00:00:01', b: '02:5a:00:00:00:02', c: '02:5a:00:00:00:03', out: '02:5a:00:00:00:99' };
const LL = { a: addressText(6, linkLocalOf(FUZZ_MACS.a)), b: addressText(6, linkLocalOf(FUZZ_MACS.b)), c: addressText(6, linkLocalOf(FUZZ_MACS.c)) };

export const FUZZ_POLICY = `
default: drop
spoofguard: true
workloads:
  a: { nic: twz-a, mac: "${FUZZ_MACS.a}", ips: [10.90.0.1, "fd90::1"], vlans: [10] }
  b: { nic: twz-b, mac: "${FUZZ_MACS.b}", ips: [10.90.0.2, "fd90::2"], vlans: [10] }
  c: { nic: twz-c, mac: "${FUZZ_MACS.c}", ips: [10.90.0.3, "fd90::3"] }
groups:
  ga: { workloads: [a] }
  gb: { workloads: [b] }
sections:
  - name: s
    rules:
      - { id: the-service, from: ga, to: gb, services: [udp/5353], action: allow }
      - { id: cut-off, from: any, to: any, action: drop }
`;

/** Addresses the generator draws from: the VMs' own, link-local, outside, special. */
const V4 = ['10.90.0.1', '10.90.0.2', '10.90.0.3', '203.0.113.7', '0.0.0.0', '255.255.255.255', '224.0.0.18', '10.90.0.255'];
const V6 = ['fd90::1', 'fd90::2', 'fd90::3', LL.a, LL.b, LL.c, '2001:db8::7', '::', 'ff02::1', 'ff02::16', 'fe80::1'];
const MACS = [FUZZ_MACS.a, FUZZ_MACS.b, FUZZ_MACS.c, FUZZ_MACS.out, 'ff:ff:ff:ff:ff:ff', '01:00:5e:00:00:12', '33:33:00:00:00:01', '33:33:ff:00:00:02', '02:00:de:ad:be:ef'];
const PORTS = ['twz-a', 'twz-b', 'twz-c', 'twz-up'];
const OWN_MAC: Record<string, string> = { 'twz-a': FUZZ_MACS.a, 'twz-b': FUZZ_MACS.b, 'twz-c': FUZZ_MACS.c, 'twz-up': FUZZ_MACS.out };
const OWN_V4: Record<string, string> = { 'twz-a': '10.90.0.1', 'twz-b': '10.90.0.2', 'twz-c': '10.90.0.3', 'twz-up': '203.0.113.7' };
const OWN_V6: Record<string, string> = { 'twz-a': 'fd90::1', 'twz-b': 'fd90::2', 'twz-c': 'fd90::3', 'twz-up': '2001:db8::7' };

export interface GeneratedFrame { port: string; frame: Uint8Array; kind: string }

/** Seeded frames of every kind, as a sender on each port might send them (mostly plausible, often not). */
export function framesOfEveryKind(seed: number, count: number): GeneratedFrame[] {
  const rnd = prng(seed);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)];
  const chance = (p: number) => rnd() < p;
  const out: GeneratedFrame[] = [];
  for (let n = 0; n < count; n++) {
    const port = pick(PORTS);
    const srcMac = chance(0.8) ? OWN_MAC[port] : pick(MACS);
    const v6 = chance(0.45);
    const src = chance(0.75) ? (v6 ? (chance(0.3) && port !== 'twz-up' ? LL[port.slice(4) as 'a' | 'b' | 'c'] : OWN_V6[port]) : OWN_V4[port]) : v6 ? pick(V6) : pick(V4);
    const dst = v6 ? pick(V6) : pick(V4);
    const dstMac = chance(0.7) ? MACS[Math.floor(rnd() * 4)] : pick(MACS);
    const vlan = chance(0.85) ? undefined : pick([10, 20, 10]);
    const kindRoll = rnd();
    let frame: Uint8Array;
    let kind: string;
    try {
      if (kindRoll < 0.1) {
        kind = 'arp';
        const op = chance(0.5) ? 1 : 2;
        const spa = chance(0.15) ? '0.0.0.0' : chance(0.8) ? OWN_V4[port] : pick(V4);
        const tpa = chance(0.2) ? spa : pick(V4);
        frame = arpFrame({ srcMac, dstMac: op === 1 && chance(0.7) ? undefined : dstMac, op, sha: chance(0.9) ? srcMac : pick(MACS), spa, tpa, vlan });
      } else if (kindRoll < 0.2 && true) {
        kind = 'nd';
        const type = chance(0.5) ? 135 : 136;
        const s6 = chance(0.1) ? '::' : chance(0.8) ? (chance(0.5) ? OWN_V6[port] : port === 'twz-up' ? 'fe80::1' : LL[port.slice(4) as 'a' | 'b' | 'c']) : pick(V6);
        const target = chance(0.7) ? pick(['fd90::1', 'fd90::2', 'fd90::3', LL.a, LL.b]) : pick(V6);
        const d6 = type === 135 ? (chance(0.6) ? solicitedNode(target) : pick(V6)) : chance(0.5) ? 'ff02::1' : pick(V6);
        frame = ndFrame({ type, srcMac, dstMac: d6.startsWith('ff') ? undefined : dstMac, src: s6, dst: d6, target: type === 136 && chance(0.7) ? s6 === '::' ? target : s6 : target,
          lla: chance(0.2) ? null : chance(0.85) ? srcMac : pick(MACS), flags: pick([0, 0x20, 0x40, 0x60, 0xe0]), vlan,
          extra: chance(0.1) ? [14, 1, 1, 2, 3, 4, 5, 6] : chance(0.05) ? Array.from({ length: 16 * Math.ceil(rnd() * 8) }, () => Math.floor(rnd() * 256)) : undefined });
      } else if (kindRoll < 0.25) {
        kind = 'ether';
        const body = Array.from({ length: 46 }, () => Math.floor(rnd() * 256));
        const et = pick([0x88cc, 0x88b5, 0x8100, 0x86dd, 0x0800, 0x0806, 0x1234]);
        frame = Uint8Array.from([...macOf(dstMac), ...macOf(srcMac), et >> 8, et & 255, ...body]);
      } else {
        const proto = v6
          ? pick([6, 6, 17, 17, 17, 58, 58, 132, 47, 0])
          : pick([6, 6, 17, 17, 17, 1, 1, 132, 47, 2]);
        kind = `ip${v6 ? 6 : 4}/${proto}`;
        const spec: FrameSpec = { family: v6 ? 6 : 4, proto, src, dst, srcMac, dstMac, vlan, ttl: chance(0.3) ? pick([1, 255]) : undefined };
        spec.sport = chance(0.3) ? 5353 : Math.floor(rnd() * 65536);
        spec.dport = chance(0.5) ? 5353 : Math.floor(rnd() * 65536);
        if (proto === 6) spec.flags = Math.floor(rnd() * 256);
        if (proto === 1 || proto === 58) {
          spec.icmpType = pick(v6 ? [128, 129, 1, 2, 3, 4, 130, 131, 133, 134, 137, 143, 200] : [8, 0, 3, 11, 5, 13, 9]);
          spec.icmpCode = chance(0.8) ? 0 : Math.floor(rnd() * 256);
          spec.id = Math.floor(rnd() * 65536);
          if ([1, 2, 3, 4, 3, 11].includes(spec.icmpType) && chance(0.8)) {
            // An error quoting a packet, often one of the allowed service's.
            spec.payload = quoted(v6, pick(v6 ? ['fd90::1', 'fd90::2'] : ['10.90.0.1', '10.90.0.2']), pick(v6 ? ['fd90::2', 'fd90::1'] : ['10.90.0.2', '10.90.0.1']), chance(0.5) ? 5353 : 1234);
          }
        }
        if (chance(0.08)) { spec.moreFragments = true; spec.ipId = Math.floor(rnd() * 65536); }
        if (chance(0.06)) { spec.fragmentOffset = Math.floor(rnd() * 200); spec.ipId = Math.floor(rnd() * 65536); spec.moreFragments = chance(0.5); }
        if (chance(0.1)) spec.payload = Uint8Array.from({ length: Math.floor(rnd() * 1400) }, () => Math.floor(rnd() * 256));
        if (port !== 'twz-up' && chance(0.25)) {
          // Plenty of the allowed service (and its replies), so that mutations hit the forwarding paths too.
          const fromA = port === 'twz-a';
          const peer = fromA ? 'b' : 'a';
          spec.proto = 17; spec.srcMac = OWN_MAC[port]; spec.dstMac = FUZZ_MACS[peer];
          spec.src = v6 ? OWN_V6[port] : OWN_V4[port]; spec.dst = v6 ? OWN_V6[`twz-${peer}`] : OWN_V4[`twz-${peer}`];
          if (fromA) spec.dport = 5353; else { spec.sport = 5353; spec.dport = 40000 + Math.floor(rnd() * 4); }
          if (fromA) spec.sport = 40000 + Math.floor(rnd() * 4);
          spec.icmpType = undefined; spec.flags = undefined;
          kind = 'service';
        }
        frame = frameBuild(spec);
        if (v6 && chance(0.12)) frame = withExtensions(frame, 1 + Math.floor(rnd() * 10), pick([0, 60, 60, 43, 51, 135]), vlan !== undefined);
        if (!v6 && chance(0.05)) frame = withIpv4Options(frame, vlan !== undefined);
      }
    } catch {
      continue; // a combination the builders cannot express
    }
    if (vlan !== undefined && chance(0.1)) frame = withSecondTag(frame);
    out.push({ port, frame, kind });
  }
  return out;
}

function macOf(mac: string): number[] {
  return mac.split(':').map((h) => parseInt(h, 16));
}

function quoted(v6: boolean, src: string, dst: string, dport: number): Uint8Array {
  const inner = frameBuild({ family: v6 ? 6 : 4, proto: 17, src, dst, sport: 40000, dport, payload: new Uint8Array(4) });
  return inner.subarray(14);
}

/** Insert `count` extension headers of type `ext` after the IPv6 header. */
function withExtensions(f: Uint8Array, count: number, ext: number, tagged: boolean): Uint8Array {
  const l3 = tagged ? 18 : 14;
  const l4 = f.slice(l3 + 40);
  const out = new Uint8Array(f.length + count * 8);
  out.set(f.subarray(0, l3 + 40));
  const inner = f[l3 + 6];
  for (let i = 0; i < count; i++) out.set([i === count - 1 ? inner : ext, ext === 51 ? 0 : 0, 0, 0, 0, 0, 0, 0], l3 + 40 + i * 8);
  out.set(l4, l3 + 40 + count * 8);
  out[l3 + 6] = ext;
  const plen = out.length - l3 - 40;
  out[l3 + 4] = plen >> 8; out[l3 + 5] = plen & 255;
  return out;
}

/** Give an IPv4 packet 4 bytes of options (NOPs and an end). */
function withIpv4Options(f: Uint8Array, tagged: boolean): Uint8Array {
  const l3 = tagged ? 18 : 14;
  const out = new Uint8Array(f.length + 4);
  out.set(f.subarray(0, l3 + 20));
  out.set([1, 1, 1, 0], l3 + 20);
  out.set(f.subarray(l3 + 20), l3 + 24);
  out[l3] = 0x46;
  const total = ((f[l3 + 2] << 8) | f[l3 + 3]) + 4;
  out[l3 + 2] = total >> 8; out[l3 + 3] = total & 255;
  return out;
}

/** An inner 802.1Q tag inside the outer one (QinQ). */
function withSecondTag(f: Uint8Array): Uint8Array {
  const out = new Uint8Array(f.length + 4);
  out.set(f.subarray(0, 16));
  out.set([0x81, 0x00, 0x00, 0x14], 16);
  out.set(f.subarray(16), 20);
  out[12] = 0x88; out[13] = 0xa8;
  return out;
}

/** Header boundaries worth cutting at: Ethernet, tags, IPv4/IPv6, L4 headers, ARP. */
const CUTS = [0, 6, 12, 13, 14, 16, 18, 20, 22, 26, 30, 33, 34, 36, 38, 40, 41, 42, 46, 48, 50, 54, 56, 58, 60, 62, 66, 70, 74, 78];

/**
 * Mutate `src` into dst (a receive slot); returns the length. A third of
 * the frames go as generated, the rest are cut, corrupted or extended.
 */
export function mutateInto(src: Uint8Array, dst: Uint8Array, off: number, rnd: () => number): number {
  const roll = rnd();
  let len = src.length;
  dst.set(src, off);
  if (roll < 0.34) return len;
  if (roll < 0.55) {
    // Cut at a header boundary (or anywhere).
    const cut = rnd() < 0.8 ? CUTS[Math.floor(rnd() * CUTS.length)] : Math.floor(rnd() * len);
    return Math.min(len, cut);
  }
  if (roll < 0.75) {
    // Corrupt one to four header bytes.
    const n = 1 + Math.floor(rnd() * 4);
    for (let i = 0; i < n; i++) dst[off + Math.floor(rnd() * Math.min(len, 80))] = Math.floor(rnd() * 256);
    return len;
  }
  if (roll < 0.87) {
    // A length field: IPv4 IHL/total, IPv6 payload length, UDP length, ICMPv6 option length.
    const l3 = (dst[off + 12] === 0x81 || dst[off + 12] === 0x88) ? 18 : 14;
    const at = [l3, l3 + 2, l3 + 3, l3 + 4, l3 + 5, l3 + 24, l3 + 45, l3 + 65][Math.floor(rnd() * 8)];
    if (at < len) dst[off + at] = Math.floor(rnd() * 256);
    return len;
  }
  // Bytes appended after the packet (padding, or a smuggled payload).
  const extra = Math.min(1 + Math.floor(rnd() * 200), dst.length - off - len);
  for (let i = 0; i < extra; i++) dst[off + len + i] = rnd() < 0.5 ? 0 : Math.floor(rnd() * 256);
  len += extra;
  return len;
}

/** The checker's own reading of a frame: just enough to say what connection it belongs to. */
interface Decoded {
  ethertype: number;
  family: 0 | 4 | 6;
  src: string;
  dst: string;
  proto: number;
  sport: number;
  dport: number;
  icmpType: number;
  fragOffset: number;
  fragMore: boolean;
  fragId: number;
  inner: null | { proto: number; src: string; dst: string; sport: number; dport: number };
  arp: null | { spa: string; tpa: string };
  ndTarget: string | null;
}

function ip4(b: Uint8Array, o: number): string {
  return `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;
}

function ip6(b: Uint8Array, o: number): string {
  const words = [0, 1, 2, 3].map((i) => ((b[o + 4 * i] << 24) | (b[o + 4 * i + 1] << 16) | (b[o + 4 * i + 2] << 8) | b[o + 4 * i + 3]) >>> 0);
  return addressText(6, words);
}

/** Decode what the checker needs; null when it cannot (then the frame should not have been sent). */
function decode(b: Uint8Array, off: number, len: number): Decoded | null {
  const end = off + len;
  if (len < 14) return null;
  let o = off + 12;
  let et = (b[o] << 8) | b[o + 1];
  while (et === 0x8100 || et === 0x88a8) { o += 4; if (o + 2 > end) return null; et = (b[o] << 8) | b[o + 1]; }
  o += 2;
  const d: Decoded = { ethertype: et, family: 0, src: '', dst: '', proto: -1, sport: -1, dport: -1, icmpType: -1, fragOffset: 0, fragMore: false, fragId: 0, inner: null, arp: null, ndTarget: null };
  if (et === 0x0806) {
    if (o + 28 > end) return null;
    d.arp = { spa: ip4(b, o + 14), tpa: ip4(b, o + 24) };
    return d;
  }
  let l4: number, l4end: number;
  if (et === 0x0800) {
    if (o + 20 > end) return null;
    const ihl = (b[o] & 15) * 4, total = (b[o + 2] << 8) | b[o + 3];
    if (ihl < 20 || o + total > end) return null;
    d.family = 4; d.src = ip4(b, o + 12); d.dst = ip4(b, o + 16); d.proto = b[o + 9];
    const frag = (b[o + 6] << 8) | b[o + 7];
    d.fragOffset = frag & 0x1fff; d.fragMore = (frag & 0x2000) !== 0; d.fragId = (b[o + 4] << 8) | b[o + 5];
    l4 = o + ihl; l4end = o + total;
  } else if (et === 0x86dd) {
    if (o + 40 > end) return null;
    d.family = 6; d.src = ip6(b, o + 8); d.dst = ip6(b, o + 24);
    l4end = o + 40 + ((b[o + 4] << 8) | b[o + 5]);
    if (l4end > end) return null;
    let next = b[o + 6];
    l4 = o + 40;
    for (;;) {
      if (next === 0 || next === 60 || next === 43) { if (l4 + 8 > l4end) return null; next = b[l4]; l4 += (b[l4 + 1] + 1) * 8; }
      else if (next === 51) { if (l4 + 8 > l4end) return null; next = b[l4]; l4 += (b[l4 + 1] + 2) * 4; }
      else if (next === 44) {
        if (l4 + 8 > l4end) return null;
        const f = (b[l4 + 2] << 8) | b[l4 + 3];
        d.fragOffset = f >> 3; d.fragMore = (f & 1) !== 0; d.fragId = ((b[l4 + 4] << 24) | (b[l4 + 5] << 16) | (b[l4 + 6] << 8) | b[l4 + 7]) >>> 0;
        next = b[l4]; l4 += 8;
      } else break;
    }
    d.proto = next;
  } else return d;
  if (d.fragOffset > 0) return d;
  if ((d.proto === 17 || d.proto === 6) && l4 + 4 <= l4end) { d.sport = (b[l4] << 8) | b[l4 + 1]; d.dport = (b[l4 + 2] << 8) | b[l4 + 3]; }
  if ((d.proto === 1 || d.proto === 58) && l4 + 8 <= l4end) {
    d.icmpType = b[l4];
    if (d.proto === 58 && (d.icmpType === 135 || d.icmpType === 136) && l4 + 24 <= l4end) d.ndTarget = ip6(b, l4 + 8);
    const q = l4 + 8;
    if (d.family === 4 && q + 28 <= l4end && b[q] >> 4 === 4) {
      const ihl = (b[q] & 15) * 4;
      d.inner = { proto: b[q + 9], src: ip4(b, q + 12), dst: ip4(b, q + 16), sport: (b[q + ihl] << 8) | b[q + ihl + 1], dport: (b[q + ihl + 2] << 8) | b[q + ihl + 3] };
    } else if (d.family === 6 && q + 44 <= l4end && b[q] >> 4 === 6) {
      d.inner = { proto: b[q + 6], src: ip6(b, q + 8), dst: ip6(b, q + 24), sport: (b[q + 40] << 8) | b[q + 41], dport: (b[q + 42] << 8) | b[q + 43] };
    }
  }
  return d;
}

const A_ADDRS = new Set(['10.90.0.1', 'fd90::1', LL.a]);
const B_ADDRS = new Set(['10.90.0.2', 'fd90::2', LL.b]);
const OWN_ADDRS: Record<string, Set<string>> = { 'twz-a': A_ADDRS, 'twz-b': B_ADDRS, 'twz-c': new Set(['10.90.0.3', 'fd90::3', LL.c]) };

/** The checker: is this frame, sent out of `outPort` after arriving on `inPort`, part of what the policy allows? */
export class AllowedTraffic {
  private readonly flows = new Set<string>();
  private readonly datagrams = new Set<string>();

  /** Why the frame may not have been forwarded, or null when it may. */
  judge(b: Uint8Array, off: number, len: number, inPort: string, outPort: string): string | null {
    const d = decode(b, off, len);
    if (d === null) return 'the checker cannot read it';
    const ab = inPort === 'twz-a' && outPort === 'twz-b', ba = inPort === 'twz-b' && outPort === 'twz-a';
    if (d.arp !== null || d.ndTarget !== null) {
      const s = d.arp ? d.arp.spa : d.src, t = d.arp ? d.arp.tpa : d.ndTarget!;
      // A VM announcing or probing its own address, to the uplink only.
      const own = OWN_ADDRS[inPort];
      if (outPort === 'twz-up' && own && (s === '0.0.0.0' || s === '::' || own.has(s)) && own.has(t)) return null;
      const pair = (x: string) => A_ADDRS.has(x) || B_ADDRS.has(x);
      if ((ab || ba) && pair(s) && pair(t)) return null;
      if ((ab || ba) && d.ndTarget !== null && pair(d.src) && pair(d.ndTarget)) return null;
      return `address resolution ${s} -> ${t} from ${inPort} to ${outPort}`;
    }
    if (d.family === 0) return `EtherType 0x${d.ethertype.toString(16)} from ${inPort} to ${outPort}`;
    const dg = `${d.family}|${d.proto}|${d.src}|${d.dst}|${d.fragId}`;
    if (d.fragOffset > 0) return this.datagrams.has(dg) ? null : `a later fragment of a datagram not allowed (${dg})`;
    if (d.proto === 17 && ab && A_ADDRS.has(d.src) && B_ADDRS.has(d.dst) && d.dport === 5353) {
      this.flows.add(`${d.src}|${d.sport}|${d.dst}`);
      if (d.fragMore) this.datagrams.add(dg);
      return null;
    }
    if (d.proto === 17 && ba && d.sport === 5353 && this.flows.has(`${d.dst}|${d.dport}|${d.src}`)) {
      if (d.fragMore) this.datagrams.add(dg);
      return null;
    }
    if ((d.proto === 1 || d.proto === 58) && d.inner !== null && d.inner.proto === 17 && (ab || ba)) {
      const q = d.inner;
      if (d.dst !== q.src) return `an ICMP error to ${d.dst} quoting a packet from ${q.src}`;
      if (this.flows.has(`${q.src}|${q.sport}|${q.dst}`) && q.dport === 5353) return null;
      if (this.flows.has(`${q.dst}|${q.dport}|${q.src}`) && q.sport === 5353) return null;
    }
    return `IPv${d.family} proto ${d.proto} ${d.src}:${d.sport} -> ${d.dst}:${d.dport} (ICMP type ${d.icmpType}) from ${inPort} to ${outPort}`;
  }
}

/** A port fed from the generated frames (mutated into the batch buffer) whose writes go to the checker. */
class FuzzPort implements PortIo {
  readonly mode = 'tap' as const;
  readonly vnetHdr = 0;
  pending = 0;
  frames: GeneratedFrame[] = [];
  constructor(readonly name: string, private readonly run: FuzzRun) {}
  start(): void {}
  dropped(): number { return 0; }
  read(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, max: number, stride: number): number {
    const n = Math.min(max, this.pending);
    for (let i = 0; i < n; i++) {
      const f = this.frames[Math.floor(this.run.rnd() * this.frames.length)];
      offsets[i] = i * stride;
      lengths[i] = mutateInto(f.frame, buf, i * stride, this.run.rnd);
    }
    this.pending -= n;
    this.run.fed += n;
    return n;
  }
  write(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, count: number): number {
    for (let i = 0; i < count; i++) {
      const why = this.run.checker.judge(buf, offsets[i], lengths[i], this.run.current, this.name);
      if (why !== null && this.run.problems.length < 20) this.run.problems.push(why);
    }
    this.run.forwarded += count;
    return count;
  }
  close(): void {}
}

interface FuzzRun { rnd: () => number; checker: AllowedTraffic; problems: string[]; current: string; fed: number; forwarded: number }

export interface FuzzReport {
  seed: number;
  frames: number;
  forwarded: number;
  seconds: number;
  outcomes: Record<string, number>;
  /** Frames forwarded that the checker does not allow (at most 20 listed). */
  problems: string[];
  /** Ports whose outcome counters do not add up to the frames they received. */
  unbalanced: string[];
}

/** Run `frames` mutated frames (in batches of up to 64, from random ports) through the data plane. */
export function fuzzFrames(opts: { frames: number; seed: number; pool?: number }): FuzzReport {
  const started = performance.now();
  const { policy } = policyParse(FUZZ_POLICY, '(fuzz)', { shadows: false });
  const run: FuzzRun = { rnd: prng(opts.seed ^ 0x5bd1e995), checker: new AllowedTraffic(), problems: [], current: '', fed: 0, forwarded: 0 };
  const pool = framesOfEveryKind(opts.seed, opts.pool ?? 4000);
  const ports = new Map<string, FuzzPort>();
  const specs = [...policy!.workloads.values()].map((w) => ({ name: w.nic, mode: 'tap' as const, workload: w.name as string | null }));
  specs.push({ name: 'twz-up', mode: 'tap', workload: null });
  const dp = new Dataplane(policyCompile(policy!), specs, {
    flowCapacity: 8192,
    portOpener: (s) => { const p = new FuzzPort(s.name, run); ports.set(s.name, p); return p; },
  });
  for (const [name, p] of ports) p.frames = pool.filter((f) => f.port === name);
  while (run.fed < opts.frames) {
    const i = Math.floor(run.rnd() * specs.length);
    const p = ports.get(specs[i].name)!;
    p.pending = Math.min(1 + Math.floor(run.rnd() * 64), opts.frames - run.fed);
    run.current = p.name;
    dp.pump(i);
  }
  dp.stop();
  const outcomes: Record<string, number> = {};
  const unbalanced: string[] = [];
  specs.forEach((s, i) => {
    let sum = 0;
    for (let k = 0; k < OUTCOME_COUNT; k++) {
      const v = dp.outcomes[i * OUTCOME_COUNT + k];
      sum += v;
      outcomes[OUTCOME_NAMES[k]] = (outcomes[OUTCOME_NAMES[k]] ?? 0) + v;
    }
    const rx = dp.portCounters[i * PC_COUNT + PC.rxPackets];
    if (sum !== rx) unbalanced.push(`${s.name}: ${rx} received, ${sum} in outcomes`);
  });
  return { seed: opts.seed, frames: run.fed, forwarded: run.forwarded, seconds: (performance.now() - started) / 1000, outcomes, problems: run.problems, unbalanced };
}

export function formatFuzz(r: FuzzReport): string {
  const lines = [`fuzz: ${r.frames} frames (seed ${r.seed}) in ${r.seconds.toFixed(1)} s; ${r.forwarded} forwarded`];
  lines.push(`outcomes: ${Object.entries(r.outcomes).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  lines.push(r.problems.length === 0 ? 'forwarded frames: every one part of an allowed connection' : `FORWARDED WHAT THE POLICY DOES NOT ALLOW:\n  ${r.problems.join('\n  ')}`);
  lines.push(r.unbalanced.length === 0 ? 'outcome counters add up to the frames received on every port' : `UNBALANCED: ${r.unbalanced.join('; ')}`);
  return lines.join('\n');
}
