/**
 * Read-only views of the running data plane for the API and the flow log:
 * connections, per-rule counters, workloads. Control path: these allocate
 * freely and are bounded by the limits the caller passes.
 */
import { addressText, type Family } from '../policy/addresses.js';
import type { CompiledPolicy } from '../policy/compile.js';
import { PC, PC_COUNT, type Dataplane } from '../datapath/dataplane.js';
import { OUTCOME_COUNT, OUTCOME_NAMES } from '../packet/verdict.js';
import { CT, CT_NAMES, ENTRY_WORDS, F, flowBytes } from '../flow/flowTable.js';
import { RS, RS_COUNT, ruleStatsRow } from '../flow/conntrack.js';
import { totalsAdd, type RuleTotals } from './ruleAnalytics.js';
import type { Rule } from '../policy/model.js';
import { PROTO } from '../policy/services.js';

const PROTO_NAMES = new Map<number, string>(Object.entries(PROTO).map(([k, v]) => [v, k]));

export function protoName(p: number): string {
  return PROTO_NAMES.get(p) ?? `ip/${p}`;
}

/** The rule at a rule order: { section, id }, 'default' for -1, null when the point was not checked. */
export function ruleRef(compiled: CompiledPolicy, order: number): { section: string; id: string } | 'default' | null {
  if (order === -1) return 'default';
  const r = compiled.rules[order];
  return r ? { section: r.section, id: r.id } : null;
}

/** The address held in words a[at..] (one word for IPv4, four for IPv6) as text. */
export function wordsAddress(a: ArrayLike<number>, at: number, family: Family): string {
  return addressText(family, family === 6 ? [a[at], a[at + 1], a[at + 2], a[at + 3]] : [a[at]]);
}

/** The interface name of port p, or null for none (NO_PORT, out of range). */
export function portNameOf(dp: Dataplane, p: number): string | null {
  return p >= 0 && p < dp.ports.length ? dp.ports[p].io.name : null;
}

export interface PortCounts {
  /** Frames received, by the outcome each ended in (every outcome, zeros included). */
  outcomes: Record<string, number>;
  rx: number;
  tx: number;
  txDropped: number;
  replies: number;
  rxErrors: number;
  attaches: number;
  /** Frames for the port dropped because its transmit queue was full. */
  txQueueFull: number;
  /** Replies the port's reply rate limit held back. */
  repliesLimited: number;
  /** Multicast and broadcast packets of other ports that this port's ingress policy refused. */
  groupRefused: number;
  /** Frames its backend dropped before tapwall read them (libpcap's queue, the AF_PACKET ring). */
  backendDropped: number;
  up: boolean;
}

/** Port i's counters, read from the data plane's arrays. */
export function portCounts(dp: Dataplane, i: number): PortCounts {
  const pc = (k: PC) => dp.portCounters[i * PC_COUNT + k];
  const outcomes: Record<string, number> = {};
  for (let k = 0; k < OUTCOME_COUNT; k++) outcomes[OUTCOME_NAMES[k]] = dp.outcomes[i * OUTCOME_COUNT + k];
  return {
    outcomes, rx: pc(PC.rxPackets), tx: pc(PC.txPackets), txDropped: pc(PC.txDropped), replies: pc(PC.replies),
    rxErrors: pc(PC.rxErrors), attaches: pc(PC.attaches), txQueueFull: pc(PC.txQueueFull), repliesLimited: pc(PC.repliesLimited),
    groupRefused: dp.sw.groupRefused[i], backendDropped: dp.backendDropped(i), up: dp.ports[i].up,
  };
}

/** IP address text -> workload name, for naming the two ends of a connection. */
export function addressOwners(compiled: CompiledPolicy): Map<string, string> {
  const m = new Map<string, string>();
  for (const w of compiled.policy.workloads.values()) for (const p of w.ips) m.set(addressText(p.family, p.words), w.name);
  return m;
}

export interface FlowView {
  vnic: string | null;
  peerPort: string | null;
  from: string | null;
  to: string | null;
  proto: string;
  src: string;
  dst: string;
  sport: number;
  dport: number;
  state: string;
  verdict: 'allowed' | 'cut';
  egressRule: ReturnType<typeof ruleRef>;
  ingressRule: ReturnType<typeof ruleRef>;
  packets: { orig: number; reply: number };
  bytes: { orig: number; reply: number };
  idleMs: number;
}

export interface FlowFilter {
  workload?: string;
  state?: string;
  verdict?: string;
  limit: number;
}

export function flowList(dp: Dataplane, filter: FlowFilter): { total: number; matched: number; flows: FlowView[] } {
  const compiled = dp.compiled;
  const owners = addressOwners(compiled);
  const t = dp.table, e = t.entries;
  const now = Math.floor(performance.now());
  const flows: FlowView[] = [];
  let matched = 0;
  for (let ent = 0; ent < t.capacity; ent++) {
    const o = ent * ENTRY_WORDS;
    if (e[o + F.meta] < 0) continue;
    const family: Family = (e[o + F.meta] & 0x100) !== 0 ? 6 : 4;
    const src = wordsAddress(e, o + F.src, family), dst = wordsAddress(e, o + F.dst, family);
    const state = e[o + F.state] & 0xff;
    const from = owners.get(src) ?? null, to = owners.get(dst) ?? null;
    const verdict = state === CT.cut ? 'cut' : 'allowed';
    if (filter.workload && from !== filter.workload && to !== filter.workload) continue;
    if (filter.state && CT_NAMES[state] !== filter.state) continue;
    if (filter.verdict && verdict !== filter.verdict) continue;
    matched++;
    if (flows.length >= filter.limit) continue;
    const nics = e[o + F.nics];
    flows.push({
      vnic: portNameOf(dp, nics & 0xffff), peerPort: portNameOf(dp, nics >>> 16), from, to,
      proto: protoName(e[o + F.meta] & 0xff), src, dst, sport: e[o + F.ports] >>> 16, dport: e[o + F.ports] & 0xffff,
      state: CT_NAMES[state], verdict,
      egressRule: ruleRef(compiled, e[o + F.ruleOut]), ingressRule: ruleRef(compiled, e[o + F.ruleIn]),
      packets: { orig: e[o + F.packetsOrig], reply: e[o + F.packetsReply] },
      bytes: { orig: flowBytes(t, ent, 0), reply: flowBytes(t, ent, 1) },
      idleMs: Math.max(0, now - e[o + F.lastSeen]),
    });
  }
  return { total: t.live, matched, flows };
}

/**
 * The body of GET /v1/rules, a slice of rules at a time (writeSliced: at
 * 100,000 rules it is 19 MB, and building it whole held the forwarding
 * thread half a second): per rule in precedence order its counters in this
 * process, and with `kept` (rule analytics) its totals across policy changes
 * and restarts and its last hit; then the default action's counters. With
 * `since` (?unused=) only the rules with no last hit or one before it. The
 * text is JSON.stringify(body, null, 2) and a newline, as the API's other
 * answers.
 */
export class RuleListWriter {
  private i = 0;
  private written = 0;
  private done = false;

  constructor(private readonly o: {
    rules: readonly Rule[];
    stats: Float64Array;
    defaultAction: string;
    /** Date.now() - performance.now() on the thread whose clock wrote RS.lastHit. */
    clockOffset: number;
    kept: ((section: string, id: string) => RuleTotals | undefined) | null;
    since: number | null;
  }) {}

  /** The next slice of text (about `rows` rules: a quarter to half a millisecond here), or null at the end. */
  next(rows = 250): string | null {
    if (this.done) return null;
    const { rules, stats, kept, since } = this.o;
    let out = '';
    if (this.i === 0 && this.written === 0) out = `{\n${since === null ? '' : `  "since": ${JSON.stringify(new Date(since).toISOString())},\n`}  "rules": [`;
    const all = Math.min(rules.length, stats.length / RS_COUNT - 1), end = Math.min(all, this.i + rows);
    for (; this.i < end; this.i++) {
      const r = rules[this.i], here = ruleStatsRow(stats, this.i + 1, this.o.clockOffset);
      const view: Record<string, unknown> = { section: r.section, id: r.id, action: r.action, log: r.log, packets: here.packets, bytes: here.bytes, connections: here.connections };
      if (kept !== null) {
        const t = totalsAdd(kept(r.section, r.id), here);
        view.total = { packets: t.packets, bytes: t.bytes, connections: t.connections };
        view.lastHit = t.lastHit ? new Date(t.lastHit).toISOString() : null;
        // Rules not hit since a time: never (in the totals kept across restarts), or last before it.
        if (since !== null && view.lastHit !== null && Date.parse(view.lastHit as string) >= since) continue;
      }
      out += `${this.written++ === 0 ? '\n' : ',\n'}    ${JSON.stringify(view, null, 2).replace(/\n/g, '\n    ')}`;
    }
    if (this.i >= all) {
      const def = { action: this.o.defaultAction, packets: stats[RS.packets], bytes: stats[RS.bytes], connections: stats[RS.connections] };
      out += `${this.written === 0 ? '' : '\n  '}],\n  "default": ${JSON.stringify(def, null, 2).replace(/\n/g, '\n  ')}\n}\n`;
      this.done = true;
    }
    return out;
  }

}

