/**
 * Read-only views of the running data plane for the API and the flow log:
 * connections, per-rule counters, workloads. Control path: these allocate
 * freely and are bounded by the limits the caller passes.
 */
import { addressText, type Family } from '../policy/addresses.js';
import type { CompiledPolicy } from '../policy/compile.js';
import type { Dataplane } from '../datapath/dataplane.js';
import { CT, CT_NAMES, ENTRY_WORDS, F, NO_PORT } from '../flow/flowTable.js';
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
  const word = (lo: number, hi: number) => (lo >>> 0) + (hi >>> 0) * 4294967296;
  for (let ent = 0; ent < t.capacity; ent++) {
    const o = ent * ENTRY_WORDS;
    if (e[o + F.meta] < 0) continue;
    const family: Family = (e[o + F.meta] & 0x100) !== 0 ? 6 : 4;
    const srcWords = family === 6 ? [e[o + F.src], e[o + F.src + 1], e[o + F.src + 2], e[o + F.src + 3]] : [e[o + F.src]];
    const dstWords = family === 6 ? [e[o + F.dst], e[o + F.dst + 1], e[o + F.dst + 2], e[o + F.dst + 3]] : [e[o + F.dst]];
    const src = addressText(family, srcWords), dst = addressText(family, dstWords);
    const state = e[o + F.state] & 0xff;
    const from = owners.get(src) ?? null, to = owners.get(dst) ?? null;
    const verdict = state === CT.cut ? 'cut' : 'allowed';
    if (filter.workload && from !== filter.workload && to !== filter.workload) continue;
    if (filter.state && CT_NAMES[state] !== filter.state) continue;
    if (filter.verdict && verdict !== filter.verdict) continue;
    matched++;
    if (flows.length >= filter.limit) continue;
    const nics = e[o + F.nics];
    const portName = (p: number) => (p === NO_PORT || p >= dp.ports.length ? null : dp.ports[p].io.name);
    flows.push({
      vnic: portName(nics & 0xffff), peerPort: portName(nics >>> 16), from, to,
      proto: protoName(e[o + F.meta] & 0xff), src, dst, sport: e[o + F.ports] >>> 16, dport: e[o + F.ports] & 0xffff,
      state: CT_NAMES[state], verdict,
      egressRule: ruleRef(compiled, e[o + F.ruleOut]), ingressRule: ruleRef(compiled, e[o + F.ruleIn]),
      packets: { orig: e[o + F.packetsOrig], reply: e[o + F.packetsReply] },
      bytes: { orig: word(e[o + F.bytesOrig], e[o + F.bytesOrig + 1]), reply: word(e[o + F.bytesReply], e[o + F.bytesReply + 1]) },
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
