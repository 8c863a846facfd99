/**
 * The one vocabulary of decisions, used by the policy compiler, the decision
 * path (datapath/frameDecide.ts), connection tracking, the tracer, metrics
 * and logs alike.
 *
 * Verdict: what a policy point (or the whole policy) says about a packet:
 *   allow, drop or reject in the low two bits, with flag bits for how the
 *   deciding rule wants it handled (stateless: not tracked; log: flow log).
 *   The policy language's action words map to it through VERDICT_OF_ACTION.
 *
 * Outcome: what finally happens to a frame, as one small integer so the hot
 *   path can index counter arrays with it. Every received frame ends in
 *   exactly one outcome; the per-outcome counters add up to the frames
 *   received. `forward` is the only outcome that sends the frame on; every
 *   other one is a drop with a named reason.
 */
import type { Action } from '../policy/model.js';

export const enum Verdict {
  allow = 0,
  drop = 1,
  reject = 2,
  /** The verdict bits of a decision; the rest are flags. */
  mask = 3,
  /** Flag: the deciding rule is stateless (the packet opens no connection). */
  stateless = 4,
  /** Flag: the deciding rule asks for a flow-log line. */
  log = 8,
}

/** Policy action word -> verdict. */
export const VERDICT_OF_ACTION: Readonly<Record<Action, Verdict>> = { allow: Verdict.allow, drop: Verdict.drop, reject: Verdict.reject };
/** Verdict (low bits) -> policy action word. */
export const ACTION_OF_VERDICT: readonly Action[] = ['allow', 'drop', 'reject'];

export const enum Outcome {
  /** Passed by an existing connection (cache hit) or a new allowed one. */
  forward = 0,
  /** A rule (or the default) drops it. */
  policy = 1,
  /** A rule (or the default) rejects it: dropped and answered. */
  reject = 2,
  /** It fits no connection state (a lone ACK, a SYN-ACK with no SYN, an echo reply with no request). */
  invalid_state = 3,
  /** The flow table is full and nothing could be evicted for it. */
  table_full = 4,
  /** Its vNIC is at its flow quota and none of its own flows could be evicted. */
  quota = 5,
  /** The frame cannot be parsed to the end: truncated, bad lengths, too many or unknown IPv6 extension headers, malformed ARP or ND. */
  malformed = 6,
  /** A connection that a new policy denies: dropped, and a TCP one is reset. */
  cut = 7,
  /** A source MAC, address, ARP sender or ND target/link-layer option that is not the sender's own (SpoofGuard); a router message from a VM; a workload's address arriving from the uplink. */
  spoof = 8,
  /** A non-IP EtherType that no rule allows. */
  ethertype = 9,
  /** No port to send it to. */
  no_route = 10,
  /** A VLAN tag the sending vNIC's workload does not declare. */
  vlan = 11,
  /** Sent to a vNIC's MAC with a destination address that is not that vNIC's (nor multicast or broadcast). */
  misdirected = 12,
  /** ARP or neighbour discovery above the vNIC's rate limit. */
  rate_limit = 13,
}

export type OutcomeName = keyof typeof Outcome;
export const OUTCOME_COUNT = 14;
/** Outcome names by number (OUTCOME_NAMES[Outcome.x] === 'x'; a test keeps the two in step). */
export const OUTCOME_NAMES: readonly OutcomeName[] = [
  'forward', 'policy', 'reject', 'invalid_state', 'table_full', 'quota', 'malformed', 'cut', 'spoof', 'ethertype', 'no_route',
  'vlan', 'misdirected', 'rate_limit',
];
