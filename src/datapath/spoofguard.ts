/**
 * SpoofGuard, in one place: what a vNIC may claim to be, and what the uplink
 * may not.
 *
 * What
 *   A vNIC sends from its own MAC and addresses only (its IPs, the link-local
 *   address of its MAC, 0.0.0.0 for DHCP discovery, :: for duplicate address
 *   detection), claims only its own addresses in ARP and neighbour discovery,
 *   and is not a router (RA guard: no router advertisements or redirects).
 *   The uplink may not send from a vNIC's MAC nor claim a workload's address.
 *
 * Layout
 *   The addresses live in the switch (switch.ts): per port a SpoofAddresses
 *   (typed arrays, built from the workload in the control path by
 *   spoofAddresses), and the MAC and address tables that find an owner.
 *
 * Who may call what
 *   The spoof* checks run per frame in the decision path (frameDecide.ts and
 *   its stages): each returns -1 when the frame passes, else its Outcome
 *   (`spoof`), said to the Explain hook; allocation-free. Each applies only
 *   while the policy has `spoofguard: true`, except RA guard, which always
 *   does. spoofAddresses is control path; spoofCheck is the tracer's words
 *   for the address rule.
 */
import { PKT, PKT_WORDS } from '../packet/parse.js';
import { Outcome } from '../packet/verdict.js';
import { workloadPrefixes, type Prefix } from '../policy/addresses.js';
import type { Workload } from '../policy/model.js';
import { say, type Explain } from './explain.js';
import type { Switch } from './switch.js';

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

/** The frame's source MAC: a vNIC's own; from the uplink, no vNIC's. */
export function spoofLinkSource(sw: Switch, buf: Uint8Array, off: number, P: number, ex: Explain | null): number {
  if (!sw.spoofguard) return -1;
  const srcHi = (buf[off + 6] << 8) | buf[off + 7];
  const srcLo = (buf[off + 8] << 24) | (buf[off + 9] << 16) | (buf[off + 10] << 8) | buf[off + 11];
  if (sw.isVnic[P] === 1) {
    if (srcHi !== sw.macHi[P] || srcLo !== sw.macLo[P]) return say(ex, 'spoofguard', Outcome.spoof, "the source MAC is not the vNIC's own");
  } else if (sw.macOwner(srcHi, srcLo) >= 0) return say(ex, 'spoofguard', Outcome.spoof, "a vNIC's MAC arriving from the uplink");
  return -1;
}

/** An ARP message's sender (MAC at l3 + 8, address at l3 + 14): a vNIC's own; from the uplink, no workload's address. */
export function spoofArpSender(sw: Switch, buf: Uint8Array, l3: number, P: number, ex: Explain | null): number {
  if (!sw.spoofguard) return -1;
  const spa = (buf[l3 + 14] | buf[l3 + 15] | buf[l3 + 16] | buf[l3 + 17]) !== 0;
  if (sw.isVnic[P] === 1) {
    const shaHi = (buf[l3 + 8] << 8) | buf[l3 + 9];
    const shaLo = (buf[l3 + 10] << 24) | (buf[l3 + 11] << 16) | (buf[l3 + 12] << 8) | buf[l3 + 13];
    if (shaHi !== sw.macHi[P] || shaLo !== sw.macLo[P]) return say(ex, 'spoofguard', Outcome.spoof, "the ARP sender MAC is not the vNIC's own");
    if (spa && !sw.ownsAddress(P, 4, buf, l3 + 14, true)) return say(ex, 'spoofguard', Outcome.spoof, "the ARP sender address is not one of the vNIC's");
  } else if (spa && sw.addrOwner(4, buf, l3 + 14, true) >= 0) {
    return say(ex, 'spoofguard', Outcome.spoof, "a workload's address claimed from the uplink");
  }
  return -1;
}

/** An ARP probe (sender 0.0.0.0) from a vNIC: only for one of its own addresses (target at l3 + 24). */
export function spoofArpProbe(sw: Switch, buf: Uint8Array, l3: number, P: number, ex: Explain | null): number {
  if (!sw.spoofguard || sw.isVnic[P] !== 1) return -1;
  if ((buf[l3 + 14] | buf[l3 + 15] | buf[l3 + 16] | buf[l3 + 17]) !== 0 || sw.ownsAddress(P, 4, buf, l3 + 24, true)) return -1;
  return say(ex, 'spoofguard', Outcome.spoof, "an ARP probe for an address that is not the vNIC's");
}

/** An IP packet's source address (parsed into sw.pkt): a vNIC's own; from the uplink, no workload's. */
export function spoofIpSource(sw: Switch, P: number, ex: Explain | null): number {
  if (!sw.spoofguard) return -1;
  const pkt = sw.pkt;
  if (sw.isVnic[P] === 1) {
    if (!spoofSourceAllowed(sw.spoof[P], pkt)) return say(ex, 'spoofguard', Outcome.spoof, "the source address is not one of the vNIC's");
  } else if (sw.addrOwner(pkt[PKT.family], pkt, PKT.src, false) >= 0) {
    return say(ex, 'spoofguard', Outcome.spoof, "a workload's address arriving from the uplink");
  }
  return -1;
}

/** RA guard: a router advertisement (134) or redirect (137) from a vNIC. Applies with SpoofGuard off too. */
export function raGuard(sw: Switch, P: number, icmpType: number, ex: Explain | null): number {
  if (sw.isVnic[P] !== 1 || (icmpType !== 134 && icmpType !== 137)) return -1;
  return say(ex, 'spoofguard', Outcome.spoof, 'a router advertisement or redirect from a VM (RA guard: a VM is not a router)');
}

/** A neighbour discovery link-layer address option (the MAC at buf[o + 2]) from a vNIC: its own MAC. */
export function spoofNdLinkOption(sw: Switch, buf: Uint8Array, o: number, P: number, ex: Explain | null): number {
  if (!sw.spoofguard || sw.isVnic[P] !== 1) return -1;
  const hi = (buf[o + 2] << 8) | buf[o + 3];
  const lo = (buf[o + 4] << 24) | (buf[o + 5] << 16) | (buf[o + 6] << 8) | buf[o + 7];
  if (hi === sw.macHi[P] && lo === sw.macLo[P]) return -1;
  return say(ex, 'spoofguard', Outcome.spoof, "the link-layer address option is not the vNIC's MAC");
}

/** Duplicate address detection (a solicitation from ::) from a vNIC: only for its own address (target at buf[target]). */
export function spoofNdDad(sw: Switch, buf: Uint8Array, target: number, P: number, ex: Explain | null): number {
  if (!sw.spoofguard || sw.isVnic[P] !== 1 || sw.ownsAddress(P, 6, buf, target, true)) return -1;
  return say(ex, 'spoofguard', Outcome.spoof, "duplicate address detection for an address that is not the vNIC's");
}

/** A neighbour advertisement's target (at buf[target]): a vNIC's own; from the uplink, no workload's. */
export function spoofNaTarget(sw: Switch, buf: Uint8Array, target: number, P: number, ex: Explain | null): number {
  if (!sw.spoofguard) return -1;
  if (sw.isVnic[P] === 1) {
    if (!sw.ownsAddress(P, 6, buf, target, true)) return say(ex, 'spoofguard', Outcome.spoof, "the advertised target is not one of the vNIC's addresses");
  } else if (sw.addrOwner(6, buf, target, true) >= 0) {
    return say(ex, 'spoofguard', Outcome.spoof, "a workload's address advertised from the uplink");
  }
  return -1;
}
