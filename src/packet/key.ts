/**
 * The classification key: the fixed layout that a parsed packet is reduced to
 * and that the rule trie reads. Values are unsigned 32-bit words, stored
 * biased (XOR 0x80000000) in an Int32Array so that signed compares order them
 * as unsigned (see classify/ruleTrie.ts).
 *
 *   IPv4: [src, dst, proto, sport, dport]                 5 words
 *   IPv6: [src0..src3, dst0..dst3, proto, sport, dport]   11 words
 *
 * For ICMP and ICMPv6 the type stands in sport and the code in dport; for
 * protocols without ports both are 0.
 */
import { bias } from '../classify/ruleTrie.js';
import { PKT } from './parse.js';

export const KEY_V4 = { dims: 5, src: 0, dst: 1, proto: 2, sport: 3, dport: 4 } as const;
export const KEY_V6 = { dims: 11, src: 0, dst: 4, proto: 8, sport: 9, dport: 10 } as const;

/** Write a key (control path: tracer, tests). Words are unsigned; family picks the layout. */
export function keyWrite(
  out: Int32Array,
  off: number,
  family: 4 | 6,
  src: readonly number[],
  dst: readonly number[],
  proto: number,
  sport: number,
  dport: number,
): void {
  if (family === 4) {
    out[off + KEY_V4.src] = bias(src[0]);
    out[off + KEY_V4.dst] = bias(dst[0]);
    out[off + KEY_V4.proto] = bias(proto);
    out[off + KEY_V4.sport] = bias(sport);
    out[off + KEY_V4.dport] = bias(dport);
    return;
  }
  for (let i = 0; i < 4; i++) {
    out[off + KEY_V6.src + i] = bias(src[i]);
    out[off + KEY_V6.dst + i] = bias(dst[i]);
  }
  out[off + KEY_V6.proto] = bias(proto);
  out[off + KEY_V6.sport] = bias(sport);
  out[off + KEY_V6.dport] = bias(dport);
}

/** The key of a parsed packet (packet/parse.ts layout) into k; for ICMP the type and code stand in the ports. Hot path. */
export function keyFromPacket(k: Int32Array, pkt: Int32Array): void {
  const family = pkt[PKT.family], proto = pkt[PKT.proto];
  const icmp = (proto === 1 && family === 4) || (proto === 58 && family === 6);
  const sport = icmp ? pkt[PKT.icmpType] : pkt[PKT.sport];
  const dport = icmp ? pkt[PKT.icmpCode] : pkt[PKT.dport];
  if (family === 4) {
    k[KEY_V4.src] = bias(pkt[PKT.src]);
    k[KEY_V4.dst] = bias(pkt[PKT.dst]);
    k[KEY_V4.proto] = bias(proto);
    k[KEY_V4.sport] = bias(sport);
    k[KEY_V4.dport] = bias(dport);
    return;
  }
  for (let i = 0; i < 4; i++) {
    k[KEY_V6.src + i] = bias(pkt[PKT.src + i]);
    k[KEY_V6.dst + i] = bias(pkt[PKT.dst + i]);
  }
  k[KEY_V6.proto] = bias(proto);
  k[KEY_V6.sport] = bias(sport);
  k[KEY_V6.dport] = bias(dport);
}

/** A key of two addresses (raw words at a[ao..], b[bo..]) with protocol and ports 0: for address resolution. */
export function keyFromAddresses(k: Int32Array, family: number, a: Int32Array, ao: number, b: Int32Array, bo: number): void {
  if (family === 4) {
    k[KEY_V4.src] = bias(a[ao]); k[KEY_V4.dst] = bias(b[bo]);
    k[KEY_V4.proto] = bias(0); k[KEY_V4.sport] = bias(0); k[KEY_V4.dport] = bias(0);
    return;
  }
  for (let i = 0; i < 4; i++) { k[KEY_V6.src + i] = bias(a[ao + i]); k[KEY_V6.dst + i] = bias(b[bo + i]); }
  k[KEY_V6.proto] = bias(0); k[KEY_V6.sport] = bias(0); k[KEY_V6.dport] = bias(0);
}
