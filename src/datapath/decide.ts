/**
 * The policy decision for a packet that no connection covers: egress at the
 * port it came in on, then ingress at the port it goes to, each where that
 * port is a workload's vNIC (the uplink has no policy point of its own). The
 * packet passes only if both allow; the first point that does not allow
 * decides. This is the FlowDecider the connection tracker calls.
 *
 * Hot-ish path: runs once per new connection (and for untracked packets);
 * allocation-free. setPolicy swaps in a new compiled policy in one step.
 *
 * Address resolution (ARP, IPv6 neighbour discovery) is decided here too
 * (resolveAllowed): two addresses may resolve each other unless, in both
 * directions, a drop rule that names every service (or arp / nd) cuts them
 * off at a vNIC on the way before any rule that allows or rejects traffic
 * between them (a quarantine's pair of rules does exactly that); by the
 * resolution tables the compiler builds beside the rule tries
 * (policy/compile.ts, PointTables.r4/r6).
 */
import { pointClassify, pointClassifyEther, pointClassifyResolution, RULE_FLAG, type CompiledPolicy, type PointTables } from '../policy/compile.js';
import { PKT } from '../packet/parse.js';
import { KEY_V6, keyFromAddresses, keyFromPacket } from '../packet/key.js';
import { Verdict, VERDICT_OF_ACTION } from '../packet/verdict.js';
import type { FlowDecider } from '../flow/conntrack.js';

/** rules[i] when a point did not check the packet (no vNIC there). */
export const RULE_NOT_CHECKED = -2;
/** rules[i] when no rule matched and the default decided. */
export const RULE_DEFAULT = -1;

export class PolicyDecider implements FlowDecider {
  private compiled!: CompiledPolicy;
  /** Port number -> the tables of that vNIC's point, or null (uplink, unknown). */
  private portTables: Array<PointTables | null> = [];
  private defaultCode = 1;
  private readonly key = new Int32Array(KEY_V6.dims);

  /** `portNics[p]` is the interface name of port p ('' for a port that is no workload's vNIC). */
  constructor(compiled: CompiledPolicy, private portNics: readonly string[]) {
    this.setPolicy(compiled);
  }

  /**
   * Swap in a new compiled policy (control path). Everything is built first
   * and assigned after, between packets: a decision sees the old policy or the
   * new one, never a mix.
   */
  setPolicy(compiled: CompiledPolicy, portNics: readonly string[] = this.portNics): void {
    const portTables = portNics.map((nic) => compiled.points.get(nic)?.egress.tables ?? null);
    const defaultCode = VERDICT_OF_ACTION[compiled.defaultAction];
    this.portNics = portNics;
    this.portTables = portTables;
    this.defaultCode = defaultCode;
    this.compiled = compiled;
  }

  get policy(): CompiledPolicy {
    return this.compiled;
  }

  /** The verdict at one point: writes the rule into rules[slot]; returns a Verdict with its flags. */
  private point(tables: PointTables, family: number, rules: Int32Array, slot: number): number {
    const order = pointClassify(tables, family === 6 ? 6 : 4, this.key, 0);
    rules[slot] = order;
    if (order < 0) return this.defaultCode;
    const flags = this.compiled.ruleFlags[order];
    return this.compiled.ruleAction[order] |
      ((flags & RULE_FLAG.stateless) !== 0 ? Verdict.stateless : 0) |
      ((flags & RULE_FLAG.log) !== 0 ? Verdict.log : 0);
  }

  decide(pkt: Int32Array, origPort: number, replyPort: number, rules: Int32Array): number {
    const family = pkt[PKT.family];
    keyFromPacket(this.key, pkt);
    rules[0] = RULE_NOT_CHECKED;
    rules[1] = RULE_NOT_CHECKED;
    let flags = 0;
    const out = origPort >= 0 && origPort < this.portTables.length ? this.portTables[origPort] : null;
    if (out !== null) {
      const d = this.point(out, family, rules, 0);
      if ((d & Verdict.mask) !== Verdict.allow) return d;
      flags |= d;
    }
    const into = replyPort >= 0 && replyPort < this.portTables.length ? this.portTables[replyPort] : null;
    if (into !== null) {
      const d = this.point(into, family, rules, 1);
      if ((d & Verdict.mask) !== Verdict.allow) return d;
      flags |= d;
    }
    // Neither end is a vNIC we serve: no point allowed it, and nothing passes unchecked.
    if (out === null && into === null) return Verdict.drop;
    return flags;
  }

  /** Resolution verdict at one point for the key in this.key: true when allowed. */
  private resolvePoint(tables: PointTables | null, family: number): boolean {
    if (tables === null) return true;
    const order = pointClassifyResolution(tables, family === 6 ? 6 : 4, this.key, 0);
    return order < 0 || this.compiled.ruleAction[order] !== Verdict.drop;
  }

  /**
   * May the address at a[ao] (on port portA) and the address at b[bo] (on
   * port portB) resolve each other? Yes when the policy passes the pair in
   * one direction at both ports' points (a port with no vNIC has none).
   * Addresses are raw words: one for IPv4, four for IPv6.
   */
  resolveAllowed(family: number, a: Int32Array, ao: number, portA: number, b: Int32Array, bo: number, portB: number): boolean {
    const ta = portA >= 0 && portA < this.portTables.length ? this.portTables[portA] : null;
    const tb = portB >= 0 && portB < this.portTables.length ? this.portTables[portB] : null;
    if (ta === null && tb === null) return false;
    keyFromAddresses(this.key, family, a, ao, b, bo);
    if (this.resolvePoint(ta, family) && this.resolvePoint(tb, family)) return true;
    keyFromAddresses(this.key, family, b, bo, a, ao);
    return this.resolvePoint(tb, family) && this.resolvePoint(ta, family);
  }

  /**
   * A non-IP frame: allowed only where every vNIC it crosses has an allowing
   * ether/ rule for its EtherType; the default does not apply to these (no
   * rule is a drop, written as RULE_DEFAULT). Writes the deciding rules into
   * rules[0] and rules[1] like decide(); returns a Verdict with its flags.
   */
  decideEther(ethertype: number, origPort: number, replyPort: number, rules: Int32Array): number {
    const out = origPort >= 0 && origPort < this.portTables.length ? this.portTables[origPort] : null;
    const into = replyPort >= 0 && replyPort < this.portTables.length ? this.portTables[replyPort] : null;
    rules[0] = RULE_NOT_CHECKED;
    rules[1] = RULE_NOT_CHECKED;
    if (out === null && into === null) return Verdict.drop;
    let flags = 0;
    if (out !== null) {
      const d = this.etherPoint(out, ethertype, rules, 0);
      if ((d & Verdict.mask) !== Verdict.allow) return d;
      flags |= d;
    }
    if (into !== null) {
      const d = this.etherPoint(into, ethertype, rules, 1);
      if ((d & Verdict.mask) !== Verdict.allow) return d;
      flags |= d;
    }
    return flags;
  }

  private etherPoint(tables: PointTables, ethertype: number, rules: Int32Array, slot: number): number {
    const order = pointClassifyEther(tables, ethertype);
    rules[slot] = order;
    if (order < 0) return Verdict.drop;
    const action = this.compiled.ruleAction[order];
    return (action === Verdict.allow ? Verdict.allow : Verdict.drop) | ((this.compiled.ruleFlags[order] & RULE_FLAG.log) !== 0 ? Verdict.log : 0);
  }
}
