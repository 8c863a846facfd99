/**
 * The resolution stage: ARP and IPv6 neighbour discovery (solicitation and
 * advertisement), which a switch would flood and tapwall does not.
 *
 * What
 *   A message must be well-formed (ARP: Ethernet/IPv4, nothing but zero
 *   padding after it; ND: hop limit 255, code 0, a unicast target, at most
 *   one link-layer address option and one nonce, the right multicast group)
 *   and pass SpoofGuard (spoofguard.ts: sender MAC and address, link-layer
 *   option, DAD and advertised target); it is rate-limited per port
 *   (`rate_limit`); it goes to the one port that owns the address asked
 *   about (else the uplink), never to every vNIC; a probe, gratuitous ARP,
 *   DAD or unsolicited advertisement goes to the uplink only; and two
 *   addresses that drop rules for every service cut off from each other in
 *   both directions may not resolve each other (`policy`: a quarantine holds
 *   for resolution too).
 *
 * Who may call what: frameDecide, per frame; allocation-free.
 */
import { NO_PORT } from '../flow/flowTable.js';
import { PKT } from '../packet/parse.js';
import { Outcome } from '../packet/verdict.js';
import { say, type Explain } from './explain.js';
import { spoofArpProbe, spoofArpSender, spoofNaTarget, spoofNdDad, spoofNdLinkOption } from './spoofguard.js';
import { deliver, ownerOrUplink, towardsUplink } from './steering.js';
import { word, type Switch } from './switch.js';

export function arpDecide(sw: Switch, buf: Uint8Array, off: number, len: number, P: number, dest: number, now: number, ex: Explain | null): number {
  const pkt = sw.pkt;
  const l3 = pkt[PKT.l3Offset];
  const op = (buf[l3 + 6] << 8) | buf[l3 + 7];
  if (((buf[l3] << 8) | buf[l3 + 1]) !== 1 || ((buf[l3 + 2] << 8) | buf[l3 + 3]) !== 0x0800 || buf[l3 + 4] !== 6 || buf[l3 + 5] !== 4 || (op !== 1 && op !== 2)) {
    return say(ex, 'arp', Outcome.malformed, 'not an Ethernet/IPv4 ARP request or reply');
  }
  // Nothing after the message but zero padding up to the minimum frame (64 bytes with a tag).
  const end = off + len;
  if (end - l3 > 28) {
    if (len > 64) return say(ex, 'arp', Outcome.malformed, 'data after the ARP message');
    for (let k = l3 + 28; k < end; k++) if (buf[k] !== 0) return say(ex, 'arp', Outcome.malformed, 'data after the ARP message');
  }
  const vnic = sw.isVnic[P] === 1;
  const spa = word(buf, l3 + 14), tpa = word(buf, l3 + 24);
  const spoofed = spoofArpSender(sw, buf, l3, P, ex);
  if (spoofed >= 0) return spoofed;
  if (!sw.resolutionToken(P, now)) return say(ex, 'rate', Outcome.rate_limit, 'above the port\'s ARP and neighbour discovery rate');
  // A probe (sender 0.0.0.0) or a gratuitous ARP concerns the sender's own address: the uplink only.
  const probe = spoofArpProbe(sw, buf, l3, P, ex);
  if (probe >= 0) return probe;
  if (vnic && (spa === 0 || spa === tpa)) {
    say(ex, 'resolution', -1, 'a probe or gratuitous ARP about its own address: to the uplink only');
    return deliver(sw, towardsUplink(sw, P), ex);
  }
  const owner = sw.addrOwner(4, buf, l3 + 24, true);
  let to: number;
  if (dest >= 0) {
    to = dest;
    if (sw.isVnic[to] === 1 ? owner !== to : owner >= 0) return say(ex, 'switch', Outcome.misdirected, "the ARP target address is not the receiving port's");
  } else to = ownerOrUplink(sw, owner, P);
  if (to === NO_PORT || to < 0) return say(ex, 'switch', Outcome.no_route, 'no port owns the address asked about');
  if (!sw.resolutionAllowed(4, buf, l3 + 14, P, l3 + 24, to)) return say(ex, 'policy', Outcome.policy, 'a drop rule cuts these two addresses off from each other, so they may not resolve each other');
  say(ex, 'resolution', -1, 'ARP between addresses no drop rule cuts off from each other');
  return deliver(sw, to, ex);
}

function isMulticast6(buf: Uint8Array, o: number): boolean {
  return buf[o] === 0xff;
}

/** Neighbour solicitation (135) and advertisement (136). */
export function ndDecide(sw: Switch, buf: Uint8Array, P: number, dest: number, now: number, ex: Explain | null): number {
  const pkt = sw.pkt;
  const l3 = pkt[PKT.l3Offset], l4 = pkt[PKT.l4Offset], end = pkt[PKT.ipEnd];
  const t = pkt[PKT.icmpType];
  const vnic = sw.isVnic[P] === 1;
  if (buf[l3 + 7] !== 255 || pkt[PKT.icmpCode] !== 0 || end - l4 < 24) return say(ex, 'nd', Outcome.malformed, 'neighbour discovery needs hop limit 255, code 0 and a whole message');
  const target = l4 + 8;
  if (isMulticast6(buf, target)) return say(ex, 'nd', Outcome.malformed, 'a multicast neighbour discovery target');
  const srcUnspecified = (pkt[PKT.src] | pkt[PKT.src + 1] | pkt[PKT.src + 2] | pkt[PKT.src + 3]) === 0;
  // Options: at most one link-layer address and one nonce, nothing else.
  let lla = 0, nonce = 0;
  for (let o = l4 + 24; o < end;) {
    const type = buf[o], olen = buf[o + 1] << 3;
    if (o + 2 > end || olen === 0 || o + olen > end) return say(ex, 'nd', Outcome.malformed, 'a neighbour discovery option with a bad length');
    if (type === (t === 135 ? 1 : 2) && olen === 8 && lla === 0) {
      lla = 1;
      const spoofed = spoofNdLinkOption(sw, buf, o, P, ex);
      if (spoofed >= 0) return spoofed;
    } else if (type === 14 && olen === 8 && nonce === 0 && t === 135) nonce = 1;
    else return say(ex, 'nd', Outcome.malformed, 'a neighbour discovery option other than one link-layer address and one nonce');
    o += olen;
  }
  const dstMulticast = isMulticast6(buf, l3 + 24);
  if (t === 135) {
    if (srcUnspecified) {
      const spoofed = spoofNdDad(sw, buf, target, P, ex);
      if (spoofed >= 0) return spoofed;
    }
    if (srcUnspecified && lla !== 0) return say(ex, 'nd', Outcome.malformed, 'duplicate address detection with a link-layer option');
    if (dstMulticast) {
      // Must be the solicited-node group of the target: ff02::1:ffXX:XXXX.
      const d = l3 + 24;
      const ok = buf[d] === 0xff && buf[d + 1] === 0x02 && word(buf, d + 4) === 0 && word(buf, d + 8) === 1 && buf[d + 12] === 0xff &&
        buf[d + 13] === buf[target + 13] && buf[d + 14] === buf[target + 14] && buf[d + 15] === buf[target + 15] && (buf[d + 2] | buf[d + 3]) === 0;
      if (!ok) return say(ex, 'nd', Outcome.malformed, "a solicitation to a multicast group other than the target's solicited-node group");
    } else if (srcUnspecified) return say(ex, 'nd', Outcome.malformed, 'duplicate address detection must go to the solicited-node group');
  } else {
    if (srcUnspecified) return say(ex, 'nd', Outcome.malformed, 'an advertisement from the unspecified address');
    if (dstMulticast) {
      const d = l3 + 24;
      const allNodes = buf[d + 1] === 0x02 && word(buf, d) === (0xff020000 | 0) && word(buf, d + 4) === 0 && word(buf, d + 8) === 0 && word(buf, d + 12) === 1;
      if (!allNodes || (buf[l4 + 4] & 0x40) !== 0) return say(ex, 'nd', Outcome.malformed, 'a multicast advertisement must go to all nodes and not be solicited');
    }
    const spoofed = spoofNaTarget(sw, buf, target, P, ex);
    if (spoofed >= 0) return spoofed;
  }
  if (!sw.resolutionToken(P, now)) return say(ex, 'rate', Outcome.rate_limit, 'above the port\'s ARP and neighbour discovery rate');
  // Duplicate address detection and unsolicited advertisements concern the sender's own address: the uplink only.
  if (vnic && (srcUnspecified || (t === 136 && dstMulticast))) {
    say(ex, 'resolution', -1, 'duplicate address detection or an unsolicited advertisement of its own address: to the uplink only');
    return deliver(sw, towardsUplink(sw, P), ex);
  }
  let to: number;
  if (dest >= 0) {
    to = dest;
    // Unicast: the destination address (and a solicitation's target) belongs to the receiving port.
    const owner = sw.addrOwner(6, buf, l3 + 24, true);
    const targetOwner = t === 135 ? sw.addrOwner(6, buf, target, true) : owner;
    if (sw.isVnic[to] === 1 ? owner !== to || targetOwner !== to : owner >= 0 || targetOwner >= 0) {
      return say(ex, 'switch', Outcome.misdirected, "the destination address is not the receiving port's");
    }
  } else if (t === 135) to = ownerOrUplink(sw, sw.addrOwner(6, buf, target, true), P);
  else to = NO_PORT; // a multicast advertisement from the uplink: vNICs learn by asking
  if (to === NO_PORT || to < 0) return say(ex, 'switch', Outcome.no_route, 'no port owns the address asked about');
  // Solicitation: the sender and the target; advertisement: the target (the sender's own) and the destination.
  const a = t === 135 ? l3 + 8 : target, b = t === 135 ? target : l3 + 24;
  if (!(t === 136 && dstMulticast) && !sw.resolutionAllowed(6, buf, a, P, b, to)) {
    return say(ex, 'policy', Outcome.policy, 'a drop rule cuts these two addresses off from each other, so they may not resolve each other');
  }
  say(ex, 'resolution', -1, 'neighbour discovery between addresses no drop rule cuts off from each other');
  return deliver(sw, to, ex);
}
