/**
 * Connection tracking: the per-packet state machine over the flow table.
 *
 * What
 *   ctProcess takes one parsed packet (packet/parse.ts layout), the port it
 *   arrived on and the port it is headed to, and returns its Outcome. A packet
 *   of a known connection costs one flow-table probe and a state update; only
 *   a packet with no connection is classified (through the FlowDecider, which
 *   runs the compiled policy), and an allowed stateful one opens an entry.
 *
 * States (flowTable.ts CT)
 *   TCP: SYN from the originator opens synSent; SYN-ACK from the other side
 *   -> synRecv; the originator's ACK -> established; a FIN -> finWait, the
 *   other side's FIN -> closing, the last ACK -> timeWait; RST -> closed. A
 *   SYN on a timeWait or closed entry reopens it. Anything else is out of
 *   state: dropped as invalid_state (strict), or let through (loose mode,
 *   where a connection is also picked up mid-stream, e.g. after a restart).
 *   UDP and other IP protocols: new until a reply, then established. ICMP
 *   echo: a request opens, its reply establishes; a reply with no request is
 *   out of state. ICMP errors that quote a tracked connection are related to
 *   it and pass with it; other ICMP errors are out of state.
 *   Each state has its own timeout (TIMEOUTS_S, Linux's defaults).
 *
 * Stateless rules
 *   A packet that a stateless rule decides is never tracked: its reply is
 *   classified on its own, and no state check applies to either.
 *
 * Policy changes
 *   `generation` counts policies. An entry decided under an older generation
 *   is stale: its next packet (or the background sweep, a bounded slice per
 *   batch) re-decides it. If the new policy denies it, the entry becomes
 *   `cut`: that packet and the connection's later ones are dropped with the
 *   outcome `cut` (the data plane answers a cut TCP connection with RST).
 *   A cut entry is itself stale after the next policy change: it is forgotten,
 *   and its next packet is decided afresh (a lifted quarantine holds at once,
 *   also for a client that reuses the same ports).
 *
 * Rule counters and flow logs
 *   `ruleStats` holds packets, bytes and connection decisions per rule
 *   ([(order + 1) * RS_COUNT + RS.x]; slot 0 is the default action), counted
 *   for the rules that decided at either point a packet crosses (once when
 *   one rule decided at both). The data plane sizes it for each policy
 *   and carries the counts over by rule id. Decisions by a rule with
 *   `log: true`, and every denial by the default, go to `flowLog` (if set),
 *   as does the end of a logged connection.
 */
import { Outcome, Verdict } from '../packet/verdict.js';
import { FRAG, ICMP, PKT, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../packet/parse.js';
import { flowLogClose, flowLogDecision, flowLogStaged, type FlowLog } from './flowLog.js';
import {
  CT, CT_NAMES, CT_STATES, ENTRY_WORDS, F, FLAG, FlowTable, INSERT_QUOTA, NO_PORT,
  flowCount, flowInsert, flowLookup, flowRemove, flowSweep, type CtStateName,
} from './flowTable.js';


export interface FlowDecider {
  /**
   * Decide a packet with no connection, or re-decide a stale one, by the
   * current policy. `origPort` is where it came in, `replyPort` where it goes
   * (NO_PORT when unknown). Writes the deciding rule orders at egress and
   * ingress into rules[0] and rules[1]. Returns a Verdict with its flags.
   */
  decide(pkt: Int32Array, origPort: number, replyPort: number, rules: Int32Array): number;
}

/** Linux's default timeouts, in seconds. */
export const TIMEOUTS_S: Record<CtStateName, number> = {
  free: 0,
  synSent: 120,
  synRecv: 60,
  established: 432_000,
  finWait: 120,
  closing: 60,
  timeWait: 120,
  closed: 10,
  udpNew: 30,
  udpEstablished: 120,
  icmpNew: 30,
  icmpEstablished: 30,
  otherNew: 600,
  otherEstablished: 600,
  cut: 10,
};

export interface ConntrackOptions {
  /** Let out-of-state packets through and pick up connections mid-stream. */
  loose?: boolean;
  /** Per-state timeouts in seconds, overriding TIMEOUTS_S. */
  timeouts?: Partial<Record<CtStateName, number>>;
  /** The uplink's port number: connections from it are charged to the vNIC they reach. */
  uplinkPort?: number;
}

/** Counters the tracker keeps besides the table's (typed-array increments; prom-client reads them at scrape time). */
/** Per-rule counters: [(order + 1) * RS_COUNT + RS.x]. */
export const enum RS { packets = 0, bytes = 1, connections = 2, lastHit = 3 }
/** Per rule: packets, bytes, connection decisions, and when it last counted one (the data plane's clock, ms; 0: never). */
export const RS_COUNT = 4;

/** One row of ruleStats: its counts, and its last hit on the wall clock (Unix ms; null: never). */
export interface RuleStatsRow { packets: number; bytes: number; connections: number; lastHit: number | null }

/**
 * Row `row` of `s` (0: the default action; rule order + 1 for a rule), rows
 * past its end reading 0. `clockOffset` is Date.now() - performance.now() on
 * the thread whose clock wrote RS.lastHit. Control path.
 */
export function ruleStatsRow(s: Float64Array, row: number, clockOffset: number): RuleStatsRow {
  const o = row * RS_COUNT;
  const last = s[o + RS.lastHit] ?? 0;
  return { packets: s[o + RS.packets] ?? 0, bytes: s[o + RS.bytes] ?? 0, connections: s[o + RS.connections] ?? 0, lastHit: last > 0 ? Math.round(clockOffset + last) : null };
}

export const enum CTC { hits = 0, misses = 1, related = 2, revalidated = 3, cut = 4, stateless = 5 }
export const CTC_COUNT = 6;

/**
 * How a staged policy disagreed with the enforced one on a new connection
 * (stagedStats[(stagedRule + 1) * SK_COUNT + SK.x], by the staged rule that
 * decided): it would refuse what is allowed, allow what is refused, or
 * decide the same by another rule.
 */
export const enum SK { wouldDeny = 0, wouldAllow = 1, otherRule = 2 }
export const SK_COUNT = 3;
export const SK_NAMES = ['would-deny', 'would-allow', 'other-rule'] as const;

export class Conntrack {
  readonly loose: boolean;
  readonly uplinkPort: number;
  /** The current policy generation; bump it (ctPolicyChanged) when the policy changes. */
  generation = 1;
  readonly counters = new Float64Array(CTC_COUNT);
  /** Scratch: rule orders from the decider; a packet rebuilt from an entry. */
  readonly rules = new Int32Array(2);
  readonly scratchPkt = new Int32Array(64);
  /** Set by ctProcess: the entry and direction of the last packet (-1 if none), for the caller. */
  lastEntry = -1;
  lastDir = 0;
  /** The time of the packet being counted (ms, the data plane's clock), for the rules' last hit. */
  now = 0;
  /** Per-rule counters (see RS); replaced, with counts carried over, when the policy changes. */
  ruleStats = new Float64Array(RS_COUNT);
  /** Where logged decisions go; null: no flow log. */
  flowLog: FlowLog | null = null;
  /**
   * A staged policy, evaluated beside the enforced one on every new
   * connection and never enforced (null: none). stagedToEnforced maps a
   * staged rule order to the enforced rule of the same id (-1 for the
   * default, -3 for none), so "the same rule" is judged by id.
   */
  staged: FlowDecider | null = null;
  stagedToEnforced = new Int32Array(0);
  stagedStats = new Float64Array(SK_COUNT);
  readonly stagedRules = new Int32Array(2);
  /** The latest disagreements (a small rate-limited ring, for the API's examples); null: none kept. */
  stagedLog: FlowLog | null = null;
  /** ctSweep's visitor of live entries, bound to this tracker once. */
  readonly sweepVisit: (ent: number) => void = (ent) => sweepVisit(this, ent);

  constructor(readonly table: FlowTable, readonly decider: FlowDecider, opts: ConntrackOptions = {}) {
    this.loose = opts.loose ?? false;
    table.onRemoveLogged = (ent) => { if (this.flowLog !== null) flowLogClose(this.flowLog, table, ent, Math.floor(performance.now())); };
    this.uplinkPort = opts.uplinkPort ?? -1;
    CT_NAMES.forEach((name, state) => {
      const s = opts.timeouts?.[name] ?? TIMEOUTS_S[name];
      if (!(s >= 0) || s * 1000 > 0x7fffffff) throw new RangeError(`timeout for ${name} must be 0 to ${Math.floor(0x7fffffff / 1000)} seconds, got ${s}`);
      table.timeouts[state] = Math.round(s * 1000);
    });
  }
}

/** A new policy is in force: every cached verdict is stale from now on. */
export function ctPolicyChanged(ct: Conntrack): void {
  ct.generation = (ct.generation + 1) | 0 || 1;
}

function setState(e: Int32Array, o: number, state: number): void {
  e[o + F.state] = (e[o + F.state] & ~0xff) | state;
}

/**
 * TCP transition for a packet with `flags` in direction `dir` (0 original,
 * 1 reply). Returns the new state, or -1 if the packet fits no state.
 */
export function tcpNext(state: number, flags: number, dir: number, stateFlags: number): number {
  if ((flags & TCP_RST) !== 0) return CT.closed;
  const syn = (flags & TCP_SYN) !== 0, ack = (flags & TCP_ACK) !== 0, fin = (flags & TCP_FIN) !== 0;
  switch (state) {
    case CT.synSent:
      if (dir === 0) return syn && !ack ? CT.synSent : -1; // only SYN retransmits
      return syn ? CT.synRecv : -1; // SYN-ACK (or a simultaneous open's SYN)
    case CT.synRecv:
      if (dir === 1) return syn ? CT.synRecv : -1; // SYN-ACK retransmits
      if (syn) return ack ? -1 : CT.synRecv; // SYN retransmit
      if (!ack) return -1;
      return fin ? CT.finWait : CT.established;
    case CT.established:
      if (syn) return -1;
      return fin ? CT.finWait : CT.established;
    case CT.finWait: {
      if (syn) return -1;
      const finFrom = dir === 0 ? FLAG.finOrig : FLAG.finReply;
      if (fin && (stateFlags & finFrom) === 0) return CT.closing; // the other side's FIN
      return CT.finWait;
    }
    case CT.closing:
      if (syn) return -1;
      return ack && !fin ? CT.timeWait : CT.closing;
    case CT.timeWait:
    case CT.closed:
      if (syn && !ack && dir === 0) return CT.synSent; // the same ports, a new connection
      return state === CT.timeWait && !syn ? CT.timeWait : -1;
    default:
      return -1;
  }
}

/** Write the tuple of entry `ent` (original direction) into ct.scratchPkt for the decider. */
function entryToPkt(ct: Conntrack, ent: number): Int32Array {
  const e = ct.table.entries, p = ct.scratchPkt;
  const o = ent * ENTRY_WORDS;
  const meta = e[o + F.meta];
  const proto = meta & 0xff;
  const v6 = (meta & 0x100) !== 0;
  p[PKT.family] = v6 ? 6 : 4;
  p[PKT.proto] = proto;
  for (let i = 0; i < 4; i++) { p[PKT.src + i] = e[o + F.src + i]; p[PKT.dst + i] = e[o + F.dst + i]; }
  const ports = e[o + F.ports];
  p[PKT.sport] = ports >>> 16;
  p[PKT.dport] = ports & 0xffff;
  p[PKT.tcpFlags] = 0;
  p[PKT.fragment] = FRAG.none;
  const echo = (proto === 1 && !v6) || (proto === 58 && v6);
  p[PKT.icmpClass] = echo ? ICMP.echoRequest : ICMP.notIcmp;
  p[PKT.icmpType] = echo ? (v6 ? 128 : 8) : 0;
  p[PKT.icmpCode] = 0;
  return p;
}

/** Re-decide a stale entry; true if the new policy still allows it (else it is now cut). */
function revalidate(ct: Conntrack, ent: number): boolean {
  const e = ct.table.entries;
  const o = ent * ENTRY_WORDS;
  const nics = e[o + F.nics];
  const d = ct.decider.decide(entryToPkt(ct, ent), nics & 0xffff, nics >>> 16, ct.rules);
  ct.counters[CTC.revalidated]++;
  e[o + F.generation] = ct.generation;
  e[o + F.ruleOut] = ct.rules[0];
  e[o + F.ruleIn] = ct.rules[1];
  if ((d & Verdict.mask) === Verdict.allow && (d & Verdict.stateless) === 0) return true;
  setState(e, o, CT.cut);
  ct.counters[CTC.cut]++;
  return false;
}

/** Background work for one batch: expire and revalidate up to `budget` entries. */
export function ctSweep(ct: Conntrack, now: number, budget: number): number {
  return flowSweep(ct.table, now, budget, ct.sweepVisit);
}

/**
 * The sweep's look at a live entry: one cut or stale under an older policy
 * is forgotten or judged again. Made once per tracker (Conntrack.sweepVisit),
 * since a closure made per batch would be the hot path's only allocation.
 */
function sweepVisit(ct: Conntrack, ent: number): void {
  const e = ct.table.entries;
  const o = ent * ENTRY_WORDS;
  if (e[o + F.generation] === ct.generation) return;
  const state = e[o + F.state] & 0xff;
  // A connection that is already over has nothing to cut, and one cut under an older policy is judged afresh
  // (the quarantine may be lifted): forget both; their next packet is decided by the policy in force.
  if (state === CT.closed || state === CT.timeWait || state === CT.cut) flowRemove(ct.table, ent);
  else revalidate(ct, ent);
}

/** Count a packet (and maybe a connection decision) for a rule order; -1 is the default, -2 (not checked) counts nowhere. */
function ruleCount(ct: Conntrack, rule: number, bytes: number, connections: number): void {
  const s = ct.ruleStats;
  const o = (rule + 1) * RS_COUNT;
  if (rule < -1 || o >= s.length) return;
  s[o + RS.packets]++;
  s[o + RS.bytes] += bytes;
  s[o + RS.connections] += connections;
  s[o + RS.lastHit] = ct.now;
}

/** A packet of a tracked connection: counted for the rules that allowed it. */
function ruleCountEntry(ct: Conntrack, o: number, bytes: number): void {
  const e = ct.table.entries;
  const out = e[o + F.ruleOut], into = e[o + F.ruleIn];
  ruleCount(ct, out, bytes, 0);
  // One packet counts once per rule, also when the same rule allowed it at both ends.
  if (into !== out) ruleCount(ct, into, bytes, 0);
}

/** Log a decision if its rule asks for it, or if the default denied it. */
function logDecision(ct: Conntrack, pkt: Int32Array, d: number, origPort: number, replyPort: number, outcome: number, now: number): void {
  const log = ct.flowLog;
  if (log === null) return;
  const out = ct.rules[0], into = ct.rules[1];
  const denied = (d & Verdict.mask) !== Verdict.allow;
  const deciding = into !== -2 ? into : out;
  if ((d & Verdict.log) === 0 && !(denied && deciding === -1)) return;
  // Charged to the vNIC whose point decided: the receiver when its ingress decided or the sender is no vNIC.
  const charged = out === -2 || (denied && into !== -2) ? replyPort : origPort;
  flowLogDecision(log, pkt, charged, origPort, replyPort, out, into, outcome, now, ct.generation);
}

function isIcmpEcho(pkt: Int32Array): boolean {
  const c = pkt[PKT.icmpClass];
  return c === ICMP.echoRequest || c === ICMP.echoReply;
}

/**
 * Count a decision for the rules that made it (once when one rule decided at
 * both points): only for a packet that a rule let through or stopped, never
 * for one that a stateful allow could not open (a lone ACK is invalid_state,
 * not a hit of the rule that would allow the connection).
 */
function ruleCountDecision(ct: Conntrack, pkt: Int32Array): void {
  ruleCount(ct, ct.rules[0], pkt[PKT.length], 1);
  if (ct.rules[1] !== ct.rules[0]) ruleCount(ct, ct.rules[1], pkt[PKT.length], 1);
}

/**
 * A decision the data plane took without a connection (a non-IP frame by
 * its ether/ rules): counted for its rules and logged like any other, with
 * `outcome` what became of the frame. Hot path.
 */
export function ctDecided(ct: Conntrack, pkt: Int32Array, d: number, origPort: number, replyPort: number, outcome: number, now: number): void {
  ct.now = now;
  ruleCountDecision(ct, pkt);
  logDecision(ct, pkt, d, origPort, replyPort, outcome, now);
}

/** The rule that decided at the points a decision checked: ingress when it was checked, else egress. */
function decidingRule(rules: Int32Array): number {
  return rules[1] !== -2 ? rules[1] : rules[0];
}

/**
 * The staged policy's answer for a new connection, beside the enforced
 * one's (d, ct.rules): a disagreement is counted by the staged rule and
 * logged (flow log and examples) marked staged. Only on a flow-cache miss.
 */
function ctStagedCompare(ct: Conntrack, staged: FlowDecider, pkt: Int32Array, d: number, arrivalPort: number, destPort: number, now: number): void {
  const sr = ct.stagedRules;
  const ds = staged.decide(pkt, arrivalPort, destPort, sr);
  const allowedNow = (d & Verdict.mask) === Verdict.allow, allowedStaged = (ds & Verdict.mask) === Verdict.allow;
  const stagedRule = decidingRule(sr), enforcedRule = decidingRule(ct.rules);
  let kind: number;
  if (allowedNow && !allowedStaged) kind = SK.wouldDeny;
  else if (!allowedNow && allowedStaged) kind = SK.wouldAllow;
  else {
    const same = stagedRule === -1 ? enforcedRule === -1 : stagedRule >= 0 && stagedRule < ct.stagedToEnforced.length && ct.stagedToEnforced[stagedRule] === enforcedRule;
    if (same) return;
    kind = SK.otherRule;
  }
  const o = (stagedRule + 1) * SK_COUNT + kind;
  if (stagedRule >= -1 && o < ct.stagedStats.length) ct.stagedStats[o]++;
  const charged = sr[0] === -2 || (!allowedStaged && sr[1] !== -2) ? destPort : arrivalPort;
  const outcome = allowedNow ? Outcome.forward : (d & Verdict.mask) === Verdict.reject ? Outcome.reject : Outcome.policy;
  if (ct.flowLog !== null) flowLogStaged(ct.flowLog, pkt, charged, arrivalPort, destPort, ct.rules[0], ct.rules[1], outcome, now, ct.generation, kind, stagedRule);
  if (ct.stagedLog !== null) flowLogStaged(ct.stagedLog, pkt, charged, arrivalPort, destPort, ct.rules[0], ct.rules[1], outcome, now, ct.generation, kind, stagedRule);
}

/** May this packet open a tracked connection (strict mode)? TCP only with a lone SYN, ICMP echo only with a request. */
function opensConnection(pkt: Int32Array): boolean {
  if (pkt[PKT.proto] === 6) return (pkt[PKT.tcpFlags] & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) === TCP_SYN;
  return pkt[PKT.icmpClass] !== ICMP.echoReply;
}

/** The Outcome of a packet no connection covers, by the policy; opens an entry when it should. */
function ctNew(ct: Conntrack, pkt: Int32Array, arrivalPort: number, destPort: number, now: number): number {
  const proto = pkt[PKT.proto];
  const d = ct.decider.decide(pkt, arrivalPort, destPort, ct.rules);
  // The staged policy judges the connections the enforced one decides: not a packet that a stateful allow
  // could not open anyway (a lone ACK, an echo reply with no request: invalid_state either way).
  if (ct.staged !== null && !(((d & (Verdict.mask | Verdict.stateless)) === Verdict.allow) && !ct.loose && !opensConnection(pkt))) {
    ctStagedCompare(ct, ct.staged, pkt, d, arrivalPort, destPort, now);
  }
  const verdict = d & Verdict.mask;
  if (verdict === Verdict.drop) { ruleCountDecision(ct, pkt); logDecision(ct, pkt, d, arrivalPort, destPort, Outcome.policy, now); return Outcome.policy; }
  if (verdict === Verdict.reject) { ruleCountDecision(ct, pkt); logDecision(ct, pkt, d, arrivalPort, destPort, Outcome.reject, now); return Outcome.reject; }
  if ((d & Verdict.stateless) !== 0) {
    ruleCountDecision(ct, pkt);
    ct.counters[CTC.stateless]++;
    logDecision(ct, pkt, d, arrivalPort, destPort, Outcome.forward, now);
    return Outcome.forward;
  }
  // Stateful allow: only a packet that can open a connection may.
  let state: number;
  let midstream = false;
  if (proto === 6) {
    const flags = pkt[PKT.tcpFlags];
    if ((flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) === TCP_SYN) state = CT.synSent;
    else if (!ct.loose) return Outcome.invalid_state;
    else if ((flags & TCP_RST) !== 0) { ruleCountDecision(ct, pkt); return Outcome.forward; } // nothing to track
    else { state = CT.established; midstream = true; }
  } else if (proto === 17) state = CT.udpNew;
  else if (isIcmpEcho(pkt)) {
    if (pkt[PKT.icmpClass] === ICMP.echoRequest) state = CT.icmpNew;
    else if (!ct.loose) return Outcome.invalid_state;
    else { ruleCountDecision(ct, pkt); return Outcome.forward; }
  } else if (pkt[PKT.icmpClass] !== ICMP.notIcmp) {
    ruleCountDecision(ct, pkt);
    return Outcome.forward; // other ICMP (not echo, not an error): the policy alone decides, untracked
  } else state = CT.otherNew;

  const ownerIsReply = arrivalPort === ct.uplinkPort && destPort !== NO_PORT;
  const ent = flowInsert(ct.table, pkt, PKT.src, PKT.dst, pkt[PKT.sport], pkt[PKT.dport], proto, pkt[PKT.family],
    arrivalPort, destPort, ownerIsReply, now);
  if (ent < 0) return ent === INSERT_QUOTA ? Outcome.quota : Outcome.table_full;
  ruleCountDecision(ct, pkt);
  const e = ct.table.entries;
  const o = ent * ENTRY_WORDS;
  e[o + F.state] |= state | (midstream ? FLAG.midstream << 8 : 0) | ((d & Verdict.log) !== 0 ? FLAG.logged << 8 : 0);
  e[o + F.generation] = ct.generation;
  e[o + F.ruleOut] = ct.rules[0];
  e[o + F.ruleIn] = ct.rules[1];
  flowCount(ct.table, ent, 0, pkt[PKT.length], now);
  logDecision(ct, pkt, d, arrivalPort, destPort, Outcome.forward, now);
  ct.lastEntry = ent;
  ct.lastDir = 0;
  return Outcome.forward;
}

/** An ICMP error: passes when it quotes a packet of a tracked, allowed connection and goes back to that packet's sender. */
function ctRelated(ct: Conntrack, pkt: Int32Array, arrivalPort: number, destPort: number, now: number): number {
  const innerProto = pkt[PKT.innerProto];
  // An error goes back to the sender of the packet it quotes: its destination is that packet's source.
  const toSender = pkt[PKT.dst] === pkt[PKT.innerSrc] && pkt[PKT.dst + 1] === pkt[PKT.innerSrc + 1] &&
    pkt[PKT.dst + 2] === pkt[PKT.innerSrc + 2] && pkt[PKT.dst + 3] === pkt[PKT.innerSrc + 3];
  if (innerProto >= 0 && toSender) {
    // The quoted packet went from its source (inner src) to inner dst; the
    // error comes back from inner dst's side, so look it up as if sent from there.
    const hit = flowLookup(ct.table, pkt, PKT.innerDst, PKT.innerSrc, pkt[PKT.innerDport], pkt[PKT.innerSport],
      innerProto, pkt[PKT.family], arrivalPort);
    if (hit >= 0) {
      const ent = hit >> 1;
      const o = ent * ENTRY_WORDS;
      const e = ct.table.entries;
      if ((e[o + F.state] & 0xff) === CT.cut) {
        if (e[o + F.generation] === ct.generation) return Outcome.cut;
        flowRemove(ct.table, ent); // cut under an older policy: no connection now; the policy decides below
      } else {
        if (e[o + F.generation] !== ct.generation && !revalidate(ct, ent)) return Outcome.cut;
        ct.counters[CTC.related]++;
        ct.lastEntry = -1;
        return Outcome.forward;
      }
    }
  }
  if (!ct.loose) {
    // Still subject to the policy first: a stateless allow passes it.
    const d = ct.decider.decide(pkt, arrivalPort, destPort, ct.rules);
    if ((d & Verdict.mask) !== Verdict.allow) return (d & Verdict.mask) === Verdict.reject ? Outcome.reject : Outcome.policy;
    return (d & Verdict.stateless) !== 0 ? Outcome.forward : Outcome.invalid_state;
  }
  return ctNew(ct, pkt, arrivalPort, destPort, now);
}

/**
 * The Outcome of one parsed IP packet that arrived on `arrivalPort` and is
 * headed to `destPort` (NO_PORT if unknown). Hot path: allocation-free.
 * After a forward, ct.lastEntry/lastDir name the connection (or -1).
 */
export function ctProcess(ct: Conntrack, pkt: Int32Array, arrivalPort: number, destPort: number, now: number): number {
  ct.lastEntry = -1;
  ct.now = now;
  // A later fragment carries no ports: the data plane sends it where its first
  // fragment went (flow/fragments.ts); one that reaches here has no first.
  if (pkt[PKT.fragment] === FRAG.later) return Outcome.invalid_state;
  if (pkt[PKT.icmpClass] === ICMP.error) return ctRelated(ct, pkt, arrivalPort, destPort, now);
  const t = ct.table;
  const proto = pkt[PKT.proto];
  const hit = flowLookup(t, pkt, PKT.src, PKT.dst, pkt[PKT.sport], pkt[PKT.dport], proto, pkt[PKT.family], arrivalPort);
  if (hit < 0) {
    ct.counters[CTC.misses]++;
    return ctNew(ct, pkt, arrivalPort, destPort, now);
  }
  const ent = hit >> 1, dir = hit & 1;
  const e = t.entries;
  const o = ent * ENTRY_WORDS;
  let state = e[o + F.state] & 0xff;
  if (state === CT.cut && e[o + F.generation] !== ct.generation) {
    // Cut under an older policy: forget it and decide this packet afresh (a lifted quarantine takes effect at once).
    flowRemove(t, ent);
    ct.counters[CTC.misses]++;
    return ctNew(ct, pkt, arrivalPort, destPort, now);
  }
  ct.counters[CTC.hits]++;
  if (state === CT.cut) return Outcome.cut;
  if (e[o + F.generation] !== ct.generation && !revalidate(ct, ent)) return Outcome.cut;

  if (proto === 6) {
    const flags = pkt[PKT.tcpFlags];
    if (state === CT.established && (flags & (TCP_SYN | TCP_FIN | TCP_RST)) === 0) {
      // The common case: data or an ACK on an open connection, no state change.
      flowCount(t, ent, dir, pkt[PKT.length], now);
      ruleCountEntry(ct, o, pkt[PKT.length]);
      ct.lastEntry = ent;
      ct.lastDir = dir;
      return Outcome.forward;
    }
    const stateFlags = e[o + F.state] >> 8;
    const next = tcpNext(state, flags, dir, stateFlags);
    if (next < 0) {
      if (!ct.loose) return Outcome.invalid_state;
    } else {
      if (next === CT.synSent && state !== CT.synSent) {
        // A reopened connection starts over: no FINs seen.
        e[o + F.state] &= ~((FLAG.finOrig | FLAG.finReply) << 8);
      }
      if ((flags & TCP_FIN) !== 0) e[o + F.state] |= (dir === 0 ? FLAG.finOrig : FLAG.finReply) << 8;
      state = next;
      setState(e, o, state);
      if ((state === CT.closed || state === CT.timeWait) && ((e[o + F.state] >> 8) & FLAG.logged) !== 0) {
        // The connection is over: its totals (this packet included) go to the log now, not at expiry.
        flowCount(t, ent, dir, pkt[PKT.length], now);
        ruleCountEntry(ct, o, pkt[PKT.length]);
        e[o + F.state] &= ~(FLAG.logged << 8);
        if (ct.flowLog !== null) flowLogClose(ct.flowLog, t, ent, now);
        ct.lastEntry = ent;
        ct.lastDir = dir;
        return Outcome.forward;
      }
    }
  } else if (state === CT.icmpNew || state === CT.icmpEstablished) {
    // Requests go the original way, replies come back.
    if (pkt[PKT.icmpClass] !== (dir === 0 ? ICMP.echoRequest : ICMP.echoReply) && !ct.loose) return Outcome.invalid_state;
    if (dir === 1) setState(e, o, CT.icmpEstablished);
  } else if (dir === 1) {
    if (state === CT.udpNew) setState(e, o, CT.udpEstablished);
    else if (state === CT.otherNew) setState(e, o, CT.otherEstablished);
  }
  flowCount(t, ent, dir, pkt[PKT.length], now);
  ruleCountEntry(ct, o, pkt[PKT.length]);
  ct.lastEntry = ent;
  ct.lastDir = dir;
  return Outcome.forward;
}

/**
 * A packet to a multicast or broadcast group, between a sender and several
 * receivers: decided at the sender's egress point once, then at each
 * receiver's ingress point, and never tracked (a group has no reply
 * direction; what comes back is unicast and decided on its own). ports[0 ..
 * count) are the candidate receivers; those whose point allows it are moved
 * to the front. Returns how many may receive it, or -1 when the sender's
 * point stops it (ct.rules[0] is then the rule). `isPoint[p]` is 1 where port
 * p is a vNIC with a policy point; a receiver with none (the uplink) takes
 * what the sender's point let out. `refused[p]` counts receivers' refusals.
 * A reject is a drop here: nothing is answered to a group packet (RFC 1122
 * 3.2.2). Hot path: allocation-free.
 */
export function ctGroup(
  ct: Conntrack, pkt: Int32Array, arrivalPort: number, isPoint: Uint8Array,
  ports: Int32Array, count: number, refused: Float64Array, now: number,
): number {
  const decider = ct.decider, rules = ct.rules, bytes = pkt[PKT.length];
  ct.now = now;
  let egressRule = -2;
  if (isPoint[arrivalPort] === 1) {
    const d = decider.decide(pkt, arrivalPort, NO_PORT, rules);
    ruleCount(ct, rules[0], bytes, 0);
    if ((d & Verdict.mask) !== Verdict.allow) {
      logDecision(ct, pkt, d, arrivalPort, NO_PORT, Outcome.policy, now);
      return -1;
    }
    logDecision(ct, pkt, d, arrivalPort, NO_PORT, Outcome.forward, now);
    egressRule = rules[0];
  }
  let taken = 0;
  for (let k = 0; k < count; k++) {
    const r = ports[k];
    if (isPoint[r] === 1) {
      const d = decider.decide(pkt, NO_PORT, r, rules);
      ruleCount(ct, rules[1], bytes, 0);
      const allowed = (d & Verdict.mask) === Verdict.allow;
      logDecision(ct, pkt, d, arrivalPort, r, allowed ? Outcome.forward : Outcome.policy, now);
      if (!allowed) { refused[r]++; continue; }
    } else if (isPoint[arrivalPort] !== 1) continue; // neither end has a point: nothing lets it through
    ports[taken++] = r;
  }
  rules[0] = egressRule; // the sender's rule, for the caller (each receiver's was counted and logged above)
  rules[1] = -2;
  return taken;
}

export { CT_STATES };

