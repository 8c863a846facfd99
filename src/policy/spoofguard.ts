/**
 * SpoofGuard: which source addresses a workload's vNIC may send from.
 *
 * Its own IPs; 0.0.0.0 for DHCP discovery (UDP 68 -> 67); and its IPv6
 * link-local address as the kernel derives it from the MAC (modified EUI-64,
 * RFC 4291 appendix A), plus :: for duplicate address detection.
 */
import { addressText, type Prefix } from './addresses.js';
import type { Workload } from './model.js';
import { PKT, PKT_WORDS } from '../packet/parse.js';

/** The EUI-64 link-local address of a MAC, as four words. */
export function linkLocalOf(mac: string): [number, number, number, number] {
  const b = mac.split(':').map((h) => parseInt(h, 16));
  b[0] ^= 0x02;
  const w2 = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | 0xff) >>> 0;
  const w3 = ((0xfe << 24) | (b[3] << 16) | (b[4] << 8) | b[5]) >>> 0;
  return [0xfe800000, 0, w2, w3];
}

/** Every address of a workload as a /128 or /32 prefix: its ips and the link-local address of its MAC. */
export function workloadPrefixes(w: Workload): Prefix[] {
  const ll = linkLocalOf(w.mac);
  const text = addressText(6, ll);
  if (w.ips.some((p) => p.family === 6 && p.words.every((x, i) => x === ll[i]))) return w.ips;
  return [...w.ips, { family: 6, words: ll, len: 128, text: `${text}/128` }];
}

/** A vNIC's own source addresses, as the data plane checks them: IPv4 words; IPv6 four words each, link-local included. */
export interface SpoofAddresses {
  v4: Int32Array;
  v6: Int32Array;
}

export function spoofAddresses(w: Workload): SpoofAddresses {
  const all = workloadPrefixes(w);
  return {
    v4: Int32Array.from(all.filter((p) => p.family === 4).map((p) => p.words[0] | 0)),
    v6: Int32Array.from(all.filter((p) => p.family === 6).flatMap((p) => p.words.map((x) => x | 0))),
  };
}

/**
 * The SpoofGuard rule itself, for a parsed packet (packet/parse.ts layout):
 * the data plane runs it per frame (allocation-free), the tracer per trace.
 */
export function spoofSourceAllowed(a: SpoofAddresses, pkt: Int32Array): boolean {
  if (pkt[PKT.family] === 4) {
    const s = pkt[PKT.src];
    const v4 = a.v4;
    for (let i = 0; i < v4.length; i++) if (v4[i] === s) return true;
    // DHCP discovery from 0.0.0.0, UDP 68 -> 67.
    return s === 0 && pkt[PKT.proto] === 17 && pkt[PKT.sport] === 68 && pkt[PKT.dport] === 67;
  }
  const v6 = a.v6;
  const s0 = pkt[PKT.src], s1 = pkt[PKT.src + 1], s2 = pkt[PKT.src + 2], s3 = pkt[PKT.src + 3];
  for (let i = 0; i < v6.length; i += 4) if (v6[i] === s0 && v6[i + 1] === s1 && v6[i + 2] === s2 && v6[i + 3] === s3) return true;
  // Duplicate address detection comes from ::.
  return (s0 | s1 | s2 | s3) === 0 && pkt[PKT.proto] === 58;
}

export type SpoofVerdict = { ok: boolean; why: string };

/** The same rule for the tracer, with the reason in words. */
export function spoofCheck(w: Workload, family: 4 | 6, src: readonly number[], proto: number, sport: number, dport: number): SpoofVerdict {
  const pkt = new Int32Array(PKT_WORDS);
  pkt[PKT.family] = family;
  pkt[PKT.proto] = proto;
  pkt[PKT.sport] = sport;
  pkt[PKT.dport] = dport;
  for (let i = 0; i < 4; i++) pkt[PKT.src + i] = src[i] | 0;
  const ok = spoofSourceAllowed(spoofAddresses(w), pkt);
  const own = w.ips.find((p: Prefix) => p.family === family && p.words.every((x, i) => x === (src[i] ?? 0)));
  if (!ok) return { ok, why: `the source address is not one of ${w.name}'s addresses (${w.ips.map((p) => p.text.replace(/\/\d+$/, '')).join(', ') || 'none'})` };
  if (own) return { ok, why: `${own.text.replace(/\/\d+$/, '')} is an address of ${w.name}` };
  if (family === 4) return { ok, why: 'DHCP discovery from 0.0.0.0 is allowed' };
  return src.every((x) => x === 0)
    ? { ok, why: 'ICMPv6 from :: (duplicate address detection) is allowed' }
    : { ok, why: `the link-local address of ${w.name}'s MAC is allowed` };
}
