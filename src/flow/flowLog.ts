/**
 * Flow log events: a ring of fixed-size records written by the connection
 * tracker and drained by the control path into JSON lines.
 *
 * Why a ring
 *   A logged decision happens on the packet path, where nothing may allocate
 *   or block. The tracker copies the few numbers an event needs (5-tuple,
 *   ports, deciding rules, verdict, counts) into a preallocated Float64Array;
 *   a timer in the control path turns them into text and writes them out.
 *
 * Layout
 *   ring:  capacity records of FLE_WORDS float64s each; `head` is the next
 *          record to write, `count` how many are waiting (oldest at
 *          head - count). When the ring is full a new event is not written
 *          and is counted as suppressed for its port.
 *   Per port: a token bucket (`rate` events per second, up to `burst`) so one
 *          noisy vNIC cannot flood the log or starve the others; what the
 *          bucket refuses is counted in `suppressed[port]` and reported by the
 *          writer as one line.
 *
 * Who may call what
 *   flowLogDecision and flowLogClose run on the packet path (allocation-free);
 *   flowLogTake runs in the control path.
 */
import { PKT } from '../packet/parse.js';
import { ENTRY_WORDS, F, flowBytes, type FlowTable } from './flowTable.js';

export const enum FLE {
  kind = 0, time = 1, port = 2, peerPort = 3, family = 4, proto = 5,
  src = 6, // 4 words
  dst = 10, // 4 words
  sport = 14, dport = 15, ruleOut = 16, ruleIn = 17, outcome = 18,
  packetsOrig = 19, packetsReply = 20, bytesOrig = 21, bytesReply = 22,
  /** The policy generation the rules were decided under (their numbers mean rules of that policy); 0: unknown. */
  generation = 23,
  /** A staged policy's disagreement: its kind + 1 (SK in conntrack.ts), 0 for an ordinary event; and the staged rule. */
  staged = 24, stagedRule = 25,
}
export const FLE_WORDS = 26;
/** Event kinds: a connection decision (allowed and opened, or denied), and the end of a logged connection. */
export const enum FLK { decision = 0, close = 1 }

export class FlowLog {
  readonly ring: Float64Array;
  head = 0;
  count = 0;
  readonly tokens: Float64Array;
  readonly refilled: Float64Array;
  readonly suppressed: Float64Array;
  readonly written: Float64Array;

  constructor(readonly capacity: number, ports: number, readonly rate = 100, readonly burst = 200) {
    this.ring = new Float64Array(capacity * FLE_WORDS);
    this.tokens = new Float64Array(ports).fill(burst);
    this.refilled = new Float64Array(ports);
    this.suppressed = new Float64Array(ports);
    this.written = new Float64Array(ports);
  }
}

/** Take a token for `port` at `now` (ms); false when its bucket is empty or the ring is full (counted). */
function admit(log: FlowLog, port: number, now: number): boolean {
  if (port < 0 || port >= log.tokens.length) port = 0;
  const t = Math.min(log.burst, log.tokens[port] + ((now - log.refilled[port]) * log.rate) / 1000);
  log.refilled[port] = now;
  if (t < 1 || log.count === log.capacity) {
    log.tokens[port] = t;
    log.suppressed[port]++;
    return false;
  }
  log.tokens[port] = t - 1;
  log.written[port]++;
  return true;
}

function slot(log: FlowLog): number {
  const o = log.head * FLE_WORDS;
  log.head = log.head + 1 === log.capacity ? 0 : log.head + 1;
  log.count++;
  return o;
}

/**
 * A connection decided (opened or denied) for a parsed packet; `port` is the vNIC charged for it.
 * Returns the record's offset in the ring, or -1 when the rate limit or a full ring refused it.
 */
export function flowLogDecision(
  log: FlowLog, pkt: Int32Array, port: number, origPort: number, replyPort: number,
  ruleOut: number, ruleIn: number, outcome: number, now: number, generation: number,
): number {
  if (!admit(log, port, now)) return -1;
  const r = log.ring, o = slot(log);
  const family = pkt[PKT.family];
  r[o + FLE.kind] = FLK.decision;
  r[o + FLE.time] = Date.now();
  r[o + FLE.port] = origPort;
  r[o + FLE.peerPort] = replyPort;
  r[o + FLE.family] = family;
  // A non-IP frame (family 0) is logged by its EtherType, with no addresses.
  r[o + FLE.proto] = family === 0 ? pkt[PKT.ethertype] : pkt[PKT.proto];
  r[o + FLE.generation] = generation;
  for (let i = 0; i < 4; i++) { r[o + FLE.src + i] = pkt[PKT.src + i]; r[o + FLE.dst + i] = pkt[PKT.dst + i]; }
  r[o + FLE.sport] = pkt[PKT.sport];
  r[o + FLE.dport] = pkt[PKT.dport];
  r[o + FLE.ruleOut] = ruleOut;
  r[o + FLE.ruleIn] = ruleIn;
  r[o + FLE.outcome] = outcome;
  r[o + FLE.staged] = 0;
  r[o + FLE.packetsOrig] = 1;
  r[o + FLE.packetsReply] = 0;
  r[o + FLE.bytesOrig] = pkt[PKT.length];
  r[o + FLE.bytesReply] = 0;
  return o;
}

/** A staged policy disagreed on a new connection: the enforced decision (as flowLogDecision) marked with the kind and the staged rule. */
export function flowLogStaged(
  log: FlowLog, pkt: Int32Array, port: number, origPort: number, replyPort: number,
  ruleOut: number, ruleIn: number, outcome: number, now: number, generation: number, kind: number, stagedRule: number,
): void {
  const o = flowLogDecision(log, pkt, port, origPort, replyPort, ruleOut, ruleIn, outcome, now, generation);
  if (o < 0) return;
  log.ring[o + FLE.staged] = kind + 1;
  log.ring[o + FLE.stagedRule] = stagedRule;
}

/** A logged connection ended (closed, expired or evicted): its totals. */
export function flowLogClose(log: FlowLog, t: FlowTable, ent: number, now: number): void {
  const e = t.entries, eo = ent * ENTRY_WORDS;
  const nics = e[eo + F.nics];
  if (!admit(log, nics & 0xffff, now)) return;
  const r = log.ring, o = slot(log);
  r[o + FLE.kind] = FLK.close;
  r[o + FLE.time] = Date.now();
  r[o + FLE.port] = nics & 0xffff;
  r[o + FLE.peerPort] = nics >>> 16;
  r[o + FLE.family] = (e[eo + F.meta] & 0x100) !== 0 ? 6 : 4;
  r[o + FLE.proto] = e[eo + F.meta] & 0xff;
  for (let i = 0; i < 4; i++) { r[o + FLE.src + i] = e[eo + F.src + i]; r[o + FLE.dst + i] = e[eo + F.dst + i]; }
  r[o + FLE.sport] = e[eo + F.ports] >>> 16;
  r[o + FLE.dport] = e[eo + F.ports] & 0xffff;
  r[o + FLE.ruleOut] = e[eo + F.ruleOut];
  r[o + FLE.ruleIn] = e[eo + F.ruleIn];
  r[o + FLE.generation] = e[eo + F.generation];
  r[o + FLE.staged] = 0;
  r[o + FLE.outcome] = 0;
  r[o + FLE.packetsOrig] = e[eo + F.packetsOrig];
  r[o + FLE.packetsReply] = e[eo + F.packetsReply];
  r[o + FLE.bytesOrig] = flowBytes(t, ent, 0);
  r[o + FLE.bytesReply] = flowBytes(t, ent, 1);
}

/** Control path: copy out the waiting events (oldest first) and empty the ring. */
export function flowLogTake(log: FlowLog): Float64Array[] {
  const out: Float64Array[] = [];
  let start = log.head - log.count;
  if (start < 0) start += log.capacity;
  for (let k = 0; k < log.count; k++) {
    const i = (start + k) % log.capacity;
    out.push(log.ring.slice(i * FLE_WORDS, (i + 1) * FLE_WORDS));
  }
  log.count = 0;
  return out;
}
