/**
 * The steering stage: where a frame goes by its destination MAC, and the
 * last checks on the port chosen.
 *
 * What
 *   A vNIC's MAC is its port; any other unicast MAC is behind the uplink
 *   (there is no MAC learning: every vNIC's MAC is declared in the policy
 *   and held to it by SpoofGuard); a group MAC (-1) is decided by what the
 *   frame is (resolution.ts for ARP and ND, policyStage.ts for IP). A vNIC
 *   sends and receives untagged frames or one VLAN its workload declares.
 *   deliver() is every stage's way out: the port exists, is up and takes the
 *   frame's VLAN, and is written as the one destination.
 *
 * Who may call what: the decision path, per frame; allocation-free.
 */
import { NO_PORT } from '../flow/flowTable.js';
import { PKT } from '../packet/parse.js';
import { Outcome } from '../packet/verdict.js';
import { say, type Explain } from './explain.js';
import type { Switch } from './switch.js';

/** Destination port by MAC: a vNIC, else the uplink (NO_PORT if none); -1 for broadcast/multicast. */
export function destOf(sw: Switch, buf: Uint8Array, off: number): number {
  if ((buf[off] & 1) !== 0) return -1;
  const hi = (buf[off] << 8) | buf[off + 1];
  const lo = (buf[off + 2] << 24) | (buf[off + 3] << 16) | (buf[off + 4] << 8) | buf[off + 5];
  const p = sw.macOwner(hi, lo);
  if (p >= 0) return p;
  return sw.uplink >= 0 ? sw.uplink : NO_PORT;
}

/** The uplink as a destination from port P, or NO_PORT when there is none or P is the uplink. */
export function towardsUplink(sw: Switch, P: number): number {
  return sw.uplink >= 0 && sw.uplink !== P ? sw.uplink : NO_PORT;
}

/** May the frame just parsed (its VLAN tags) be sent by or to vNIC port p? Untagged always; one tag if declared; never two. */
export function vlanAllowed(sw: Switch, p: number): boolean {
  const count = sw.pkt[PKT.vlanCount];
  if (count === 0) return true;
  const map = sw.vlans[p];
  if (count > 1 || map === null) return false;
  const v = sw.pkt[PKT.vlan];
  return (map[v >> 3] & (1 << (v & 7))) !== 0;
}

/** Where a broadcast question about an address goes: to the port that owns it, else towards the uplink. */
export function ownerOrUplink(sw: Switch, owner: number, P: number): number {
  return owner >= 0 && owner !== P ? owner : towardsUplink(sw, P);
}

/** Final checks on the chosen port: it exists and is up, and a vNIC gets only its own VLAN. */
export function deliver(sw: Switch, to: number, ex: Explain | null): number {
  if (to < 0 || to === NO_PORT) return say(ex, 'switch', Outcome.no_route, 'there is no port to send it to');
  if (sw.up[to] !== 1) return say(ex, 'switch', Outcome.no_route, 'the port it goes to is down');
  if (sw.isVnic[to] === 1 && !vlanAllowed(sw, to)) return say(ex, 'switch', Outcome.vlan, 'the receiving vNIC does not declare this VLAN');
  sw.dest = to;
  sw.dests[0] = to;
  sw.destCount = 1;
  return Outcome.forward;
}
