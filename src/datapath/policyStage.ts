/**
 * The IP stage: SpoofGuard on the source address, router messages, the
 * address check on the destination, fragments, and connection tracking with
 * the policy; or, for a packet to a multicast or broadcast group, delivery
 * to every port whose policy takes it.
 *
 * What
 *   Unicast: the sender's egress point and the receiver's ingress point
 *   decide a packet no connection covers; connection tracking
 *   (flow/conntrack.ts) passes a connection's later packets in its state. A
 *   frame for a vNIC must carry one of its addresses (or a group one), and a
 *   local workload's address may not go towards the uplink (`misdirected`).
 *   Later fragments follow their first fragment (decided again if the
 *   policy changed since). Groups: groupDecide below.
 *
 * Who may call what: frameDecide, per frame; allocation-free.
 */
import { ctGroup, ctProcess } from '../flow/conntrack.js';
import { fragLookup, fragRemember, fragUpdate } from '../flow/fragments.js';
import { NO_PORT } from '../flow/flowTable.js';
import { FRAG, PKT } from '../packet/parse.js';
import { Outcome } from '../packet/verdict.js';
import { say, type Explain } from './explain.js';
import { ndDecide } from './resolution.js';
import { raGuard, spoofIpSource } from './spoofguard.js';
import { deliver, towardsUplink, vlanAllowed } from './steering.js';
import type { Switch } from './switch.js';

/** Is the destination address (at l3 + 16 or + 24) multicast or broadcast? */
function dstIsGroup(pkt: Int32Array): boolean {
  if (pkt[PKT.family] === 4) {
    const d = pkt[PKT.dst];
    return (d >>> 28) === 0xe || d === -1;
  }
  return (pkt[PKT.dst] >>> 24) === 0xff;
}

export function ipDecide(sw: Switch, buf: Uint8Array, P: number, dest: number, now: number, ex: Explain | null): number {
  const pkt = sw.pkt;
  const family = pkt[PKT.family];
  const spoofed = spoofIpSource(sw, P, ex);
  if (spoofed >= 0) return spoofed;
  if (family === 6 && pkt[PKT.proto] === 58 && pkt[PKT.fragment] !== FRAG.later) {
    const t = pkt[PKT.icmpType];
    if (pkt[PKT.fragment] === FRAG.first && t >= 130 && t <= 143) return say(ex, 'nd', Outcome.malformed, 'fragmented neighbour discovery or MLD (RFC 6980)');
    if (t === 135 || t === 136) return ndDecide(sw, buf, P, dest, now, ex);
    if (t >= 130 && t <= 137 || t === 143) {
      const l3 = pkt[PKT.l3Offset];
      const router = raGuard(sw, P, t, ex);
      if (router >= 0) return router;
      const hop = buf[l3 + 7];
      const mld = t !== 133 && t !== 134 && t !== 137;
      if (pkt[PKT.icmpCode] !== 0 || hop !== (mld ? 1 : 255)) return say(ex, 'nd', Outcome.malformed, 'neighbour discovery with a hop limit other than 255, MLD other than 1, or a non-zero code');
    }
  }
  // To a group, whole (not fragmented): every port whose policy takes it, not only the uplink.
  if (dest < 0 && pkt[PKT.fragment] === FRAG.none && dstIsGroup(pkt)) return groupDecide(sw, P, now, ex);
  let to = dest >= 0 ? dest : dest === NO_PORT ? NO_PORT : towardsUplink(sw, P);
  if (to === NO_PORT) return say(ex, 'switch', Outcome.no_route, 'there is no port to send it to');
  if (!dstIsGroup(pkt)) {
    if (sw.isVnic[to] === 1) {
      if (!sw.ownsAddress(to, family, pkt, PKT.dst, false)) return say(ex, 'switch', Outcome.misdirected, "sent to a vNIC's MAC with a destination address that is not the vNIC's");
    } else if (sw.addrOwner(family, pkt, PKT.dst, false) >= 0) {
      return say(ex, 'switch', Outcome.misdirected, "a local workload's address sent towards the uplink (it would skip that workload's ingress check)");
    }
  }
  let outcome: number;
  if (pkt[PKT.fragment] === FRAG.later) {
    // No ports to look at: follow the first fragment of the datagram.
    const first = fragLookup(sw.frags, pkt, now);
    if (first < 0) return say(ex, 'fragments', Outcome.invalid_state, 'a later fragment whose first fragment was not seen');
    to = first & 0xffff;
    if (sw.frags.lastGeneration === sw.ct.generation) {
      outcome = first >> 16;
    } else {
      // The policy changed since the first fragment: decide again, with its ports.
      pkt[PKT.sport] = sw.frags.lastPorts >>> 16;
      pkt[PKT.dport] = sw.frags.lastPorts & 0xffff;
      pkt[PKT.fragment] = FRAG.first;
      outcome = ctProcess(sw.ct, pkt, P, to, now);
      pkt[PKT.fragment] = FRAG.later;
      fragUpdate(sw.frags, pkt, outcome, to, sw.ct.generation);
    }
    if (outcome !== Outcome.forward) return say(ex, 'fragments', outcome, 'a later fragment follows its first fragment');
    return deliver(sw, to, ex);
  }
  outcome = ctProcess(sw.ct, pkt, P, to, now);
  if (pkt[PKT.fragment] === FRAG.first) fragRemember(sw.frags, pkt, outcome, to, now, sw.ct.generation);
  if (outcome !== Outcome.forward) return say(ex, 'conntrack', outcome, 'connection tracking and the policy');
  return deliver(sw, to, ex);
}

/**
 * An IP packet to a multicast or broadcast group (group MAC and group
 * address), as a switch floods it: to every other port that is up, takes its
 * VLAN and whose ingress policy allows it (flow/conntrack.ts ctGroup: the
 * sender's egress point once, each receiver's ingress point, untracked);
 * from a vNIC the uplink gets it too, by the sender's point alone. Rate
 * limited per sending port (`rate_limit`). The outcome is `forward` when at
 * least one port takes it, `policy` when the sender's point or every
 * receiver's refused it, `no_route` when no port could have. Fragmented
 * group packets are not flooded: they take the unicast path (towards the
 * uplink), since a later fragment follows one port.
 */
function groupDecide(sw: Switch, P: number, now: number, ex: Explain | null): number {
  const dests = sw.dests;
  let count = 0;
  for (let p = 0; p < sw.portCount; p++) {
    if (p === P || sw.up[p] !== 1) continue;
    if (sw.isVnic[p] === 1) {
      if (sw.workloads[p] === null || !vlanAllowed(sw, p)) continue;
    } else if (p !== sw.uplink || sw.isVnic[P] !== 1) continue;
    dests[count++] = p;
  }
  if (count === 0) return say(ex, 'group', Outcome.no_route, 'a multicast or broadcast packet with no other port to take it');
  if (!sw.groupToken(P, now)) return say(ex, 'rate', Outcome.rate_limit, "above the port's multicast and broadcast rate");
  if (ex !== null) sw.groupCandidates.set(dests.subarray(0, count));
  const taken = ctGroup(sw.ct, sw.pkt, P, sw.isVnic, dests, count, sw.groupRefused, now);
  if (ex !== null && taken >= 0) {
    // Each receiver's own answer, for the tracer (the data plane passes null and skips this).
    for (let k = 0; k < count; k++) {
      const r = sw.groupCandidates[k];
      let took = false;
      for (let j = 0; j < taken; j++) if (dests[j] === r) took = true;
      ex.step('group', took ? -1 : Outcome.policy, took ? 'this receiver takes it' : "this receiver's ingress policy refuses it", r);
    }
  }
  if (taken < 0) return say(ex, 'group', Outcome.policy, "the sender's egress policy does not let this multicast or broadcast packet out");
  if (taken === 0) return say(ex, 'group', Outcome.policy, "no receiver's ingress policy takes this multicast or broadcast packet");
  sw.dest = dests[0];
  sw.destCount = taken;
  say(ex, 'group', -1, 'a multicast or broadcast packet: to every port whose policy takes it');
  return Outcome.forward;
}
