/**
 * Outcomes of a frame: one enum for the whole pipeline (parser, flow cache,
 * connection tracking, policy), as small integers so the hot path can index
 * counter arrays with them. Every received frame ends in exactly one outcome;
 * the per-outcome counters add up to the frames received.
 */

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
  /** The frame cannot be parsed: truncated, bad header length, bad version. */
  malformed = 6,
  /** A connection that a new policy denies: dropped, and a TCP one is reset. */
  cut = 7,
  /** Source MAC or address is not the vNIC's own (SpoofGuard). */
  spoof = 8,
  /** A non-IP EtherType that no rule allows. */
  ethertype = 9,
  /** No port to send it to. */
  no_route = 10,
}

export type OutcomeName = keyof typeof Outcome;
export const OUTCOME_COUNT = 11;
/** Outcome names by number (OUTCOME_NAMES[Outcome.x] === 'x'; a test keeps the two in step). */
export const OUTCOME_NAMES: readonly OutcomeName[] = [
  'forward', 'policy', 'reject', 'invalid_state', 'table_full', 'quota', 'malformed', 'cut', 'spoof', 'ethertype', 'no_route',
];

