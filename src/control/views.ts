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
import { RS, RS_COUNT } from '../flow/conntrack.js';
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

export interface RuleView {
  section: string;
  id: string;
  action: string;
  log: boolean;
  packets: number;
  bytes: number;
  connections: number;
}

/** Per-rule counters in precedence order, then the default action's. */
export function ruleList(dp: Dataplane): { rules: RuleView[]; default: Omit<RuleView, 'section' | 'id' | 'log'> } {
  const compiled = dp.compiled, s = dp.ct.ruleStats;
  const at = (i: number) => ({ packets: s[i * RS_COUNT + RS.packets] ?? 0, bytes: s[i * RS_COUNT + RS.bytes] ?? 0, connections: s[i * RS_COUNT + RS.connections] ?? 0 });
  return {
    rules: compiled.rules.map((r, i) => ({ section: r.section, id: r.id, action: r.action, log: r.log, ...at(i + 1) })),
    default: { action: compiled.defaultAction, ...at(0) },
  };
}
