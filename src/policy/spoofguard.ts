/**
 * SpoofGuard: which source addresses a workload's vNIC may send from.
 *
 * Its own IPs; 0.0.0.0 for DHCP discovery (UDP 68 -> 67); and its IPv6
 * link-local address as the kernel derives it from the MAC (modified EUI-64,
 * RFC 4291 appendix A), plus :: for duplicate address detection.
 */
import type { Prefix } from './addresses.js';
import type { Workload } from './model.js';

/** The EUI-64 link-local address of a MAC, as four words. */
export function linkLocalOf(mac: string): [number, number, number, number] {
  const b = mac.split(':').map((h) => parseInt(h, 16));
  b[0] ^= 0x02;
  const w2 = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | 0xff) >>> 0;
  const w3 = ((0xfe << 24) | (b[3] << 16) | (b[4] << 8) | b[5]) >>> 0;
  return [0xfe800000, 0, w2, w3];
}

export type SpoofVerdict = { ok: true; why: string } | { ok: false; why: string };

export function spoofCheck(w: Workload, family: 4 | 6, src: readonly number[], proto: number, sport: number, dport: number): SpoofVerdict {
  const same = (p: Prefix) => p.family === family && p.words.every((x, i) => (family === 4 ? i > 0 || x === src[0] : x === src[i]));
  const own = w.ips.find(same);
  if (own) return { ok: true, why: `${own.text.replace(/\/\d+$/, '')} is an address of ${w.name}` };
  if (family === 4 && src[0] === 0 && proto === 17 && sport === 68 && dport === 67) {
    return { ok: true, why: 'DHCP discovery from 0.0.0.0 is allowed' };
  }
  if (family === 6) {
    const ll = linkLocalOf(w.mac);
    if (ll.every((x, i) => x === src[i])) return { ok: true, why: `the link-local address of ${w.name}'s MAC is allowed` };
    if (src.every((x) => x === 0) && proto === 58) return { ok: true, why: 'ICMPv6 from :: (duplicate address detection) is allowed' };
  }
  return { ok: false, why: `the source address is not one of ${w.name}'s addresses (${w.ips.map((p) => p.text.replace(/\/\d+$/, '')).join(', ') || 'none'})` };
}
