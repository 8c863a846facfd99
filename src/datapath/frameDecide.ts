/**
 * The decision path: what happens to one frame that arrived on one port.
 *
 * What
 *   frameDecide(sw, buf, off, len, arrival, now, explain) returns the frame's
 *   Outcome and, for `forward`, the ports it goes to (sw.dests[0 ..
 *   destCount): one, or for a group packet every receiver). The data
 *   plane calls it for every frame it reads (explain = null); the tracer
 *   builds a frame from a packet description and calls it with an explain
 *   hook that records each step. There is no second implementation of any
 *   step, so the tracer cannot disagree with the data plane.
 *
 * The steps, in order (each may end the frame with a named Outcome)
 *   1. parse: what cannot be read to the end is `malformed` (packet/parse.ts).
 *   2. SpoofGuard, link layer: a vNIC sends from its own MAC only; the uplink
 *      may not send from a vNIC's MAC (`spoof`). A vNIC's frames are untagged
 *      or carry one VLAN its workload declares (`vlans`, none by default),
 *      and a vNIC receives only such frames (`vlan`).
 *   3. destination by MAC: a vNIC's MAC is its port; any other unicast MAC is
 *      behind the uplink; back out of the arrival port is `no_route`. A group
 *      MAC is decided by what the frame is: ARP and ND go to the owner of the
 *      address asked about (4), IP to a group goes to every port whose policy
 *      takes it (5, groupDecide), anything else towards the uplink.
 *   4. ARP (ETHERTYPE 0x0806) and neighbour solicitation/advertisement:
 *      well-formed or `malformed` (Ethernet/IPv4 ARP with nothing but zero
 *      padding after it; ND with hop limit 255, code 0, a unicast target, at
 *      most one source/target link-layer and one nonce option, the right
 *      multicast destination); sender checks (`spoof`: ARP sender and ND
 *      link-layer options are the vNIC's MAC, the sender address and an NA's
 *      target its own; from the uplink no workload address); a per-port rate
 *      limit (`rate_limit`); steered to the one port that owns the address
 *      asked about (else the uplink); and refused between addresses that
 *      drop rules for every service cut off from each other in both
 *      directions (decide.ts resolveAllowed), so a quarantine holds for them
 *      too (`policy`). A probe or gratuitous ARP and
 *      duplicate address detection go to the uplink only.
 *   5. IP: SpoofGuard on the source address (vNIC: its own; uplink: no
 *      workload's); router advertisements and redirects from a vNIC are
 *      `spoof`; router solicitation and MLD must have their hop limit and
 *      are then ordinary ICMPv6 for the policy; a frame for a vNIC must carry
 *      one of its addresses, or a multicast or broadcast one (`misdirected`);
 *      later fragments follow their first fragment (decided again if the
 *      policy changed since); a whole packet to a multicast or broadcast
 *      group is flooded to the ports whose ingress policy takes it, after the
 *      sender's egress point (groupDecide, flow/conntrack.ts ctGroup);
 *      everything else is connection tracking and the policy
 *      (flow/conntrack.ts, decide.ts).
 *   6. Other EtherTypes: the policy's ether/ rules at both ends, else
 *      `ethertype`.
 *
 * The stages, each in its own file with its design note
 *   parse (packet/parse.ts) -> link (spoofguard.ts spoofLinkSource, the
 *   sending vNIC's VLAN) -> steering (steering.ts: destination by MAC,
 *   hairpin) -> one of: resolution (resolution.ts: ARP, ND), ip
 *   (policyStage.ts: SpoofGuard on the address, router messages, fragments,
 *   conntrack and policy, or group delivery), ether (ether/ rules). Every
 *   stage leaves by deliver() (steering.ts) or a named drop. SpoofGuard's
 *   checks all live in spoofguard.ts; the switch's state in switch.ts.
 *   Each stage counts the frames it takes in and those it drops
 *   (sw.stageCounts, [stage * 2] in, [stage * 2 + 1] dropped); what it
 *   passes on is the difference, and parse's count is every frame read.
 *
 * Who may call what
 *   frameDecide runs per frame on the packet path: allocation-free, never
 *   throws; the explain hook is called with constant strings only. Switch's
 *   constructor and setPolicy are control path.
 */
import { ctDecided } from '../flow/conntrack.js';
import { NO_PORT } from '../flow/flowTable.js';
import { PARSE, PKT, parseFrame } from '../packet/parse.js';
import { Outcome, Verdict } from '../packet/verdict.js';
import { say, type Explain } from './explain.js';
import { ipDecide } from './policyStage.js';
import { arpDecide } from './resolution.js';
import { spoofLinkSource } from './spoofguard.js';
import { destOf, deliver, towardsUplink, vlanAllowed } from './steering.js';
import { STAGE, type Switch } from './switch.js';

export type { Explain } from './explain.js';
export { Switch, type SwitchOptions, type SwitchPort } from './switch.js';

/** A frame left stage s: counted as dropped there unless it goes on (forward). */
function stageOut(sw: Switch, s: number, outcome: number): number {
  if (outcome !== Outcome.forward) sw.stageCounts[s * 2 + 1]++;
  return outcome;
}

/**
 * The Outcome of the frame buf[off .. off+len) that arrived on port P; for
 * `forward`, sw.dests[0 .. destCount) are where it goes. Hot path.
 */
export function frameDecide(sw: Switch, buf: Uint8Array, off: number, len: number, P: number, now: number, ex: Explain | null): number {
  const pkt = sw.pkt, counts = sw.stageCounts;
  sw.dest = -1;
  sw.destCount = 0;
  counts[STAGE.parse * 2]++;
  const kind = parseFrame(buf, off, len, pkt);
  if (kind === PARSE.malformed) return stageOut(sw, STAGE.parse, say(ex, 'parse', Outcome.malformed, 'the frame cannot be read to the end (truncated, bad lengths, or headers tapwall does not read past)'));
  counts[STAGE.link * 2]++;
  const spoofed = spoofLinkSource(sw, buf, off, P, ex);
  if (spoofed >= 0) return stageOut(sw, STAGE.link, spoofed);
  if (sw.isVnic[P] === 1 && !vlanAllowed(sw, P)) return stageOut(sw, STAGE.link, say(ex, 'vlan', Outcome.vlan, 'the frame carries a VLAN tag its workload does not declare'));
  counts[STAGE.steering * 2]++;
  const dest = destOf(sw, buf, off);
  if (dest === P) return stageOut(sw, STAGE.steering, say(ex, 'switch', Outcome.no_route, 'addressed back to the port it came from'));
  if (kind === PARSE.arp) {
    counts[STAGE.resolution * 2]++;
    return stageOut(sw, STAGE.resolution, arpDecide(sw, buf, off, len, P, dest, now, ex));
  }
  if (kind === PARSE.ip) {
    // IPv6 neighbour discovery is ICMPv6: the ip stage hands it to resolution.ts and it is counted here.
    counts[STAGE.ip * 2]++;
    return stageOut(sw, STAGE.ip, ipDecide(sw, buf, P, dest, now, ex));
  }
  counts[STAGE.ether * 2]++;
  return stageOut(sw, STAGE.ether, etherDecide(sw, P, dest, now, ex));
}

/** Another EtherType: the policy's ether/ rules at both ends (counted and logged like IP rules), else dropped. */
function etherDecide(sw: Switch, P: number, dest: number, now: number, ex: Explain | null): number {
  const pkt = sw.pkt;
  const target = dest < 0 ? towardsUplink(sw, P) : dest;
  if (target === NO_PORT) return say(ex, 'switch', Outcome.no_route, 'there is no port to send it to');
  const d = sw.decider.decideEther(pkt[PKT.ethertype], P, target, sw.ct.rules);
  if ((d & Verdict.mask) !== Verdict.allow) {
    ctDecided(sw.ct, pkt, d, P, target, Outcome.ethertype, now);
    return say(ex, 'policy', Outcome.ethertype, 'no ether/ rule allows this EtherType at every vNIC it crosses');
  }
  const outcome = deliver(sw, target, ex);
  ctDecided(sw.ct, pkt, d, P, target, outcome, now);
  return outcome;
}
