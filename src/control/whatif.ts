/**
 * What-if replay: what a candidate policy would have done with connections
 * that really happened, before anything is staged or applied.
 *
 * Input: flow-log lines (the daemon's `--flow-log` JSON lines; their
 * "decision" events: a connection's first packet and what the policy in
 * force did with it) and, optionally, the live flow table (GET /v1/flows:
 * connections open now, all allowed or cut). Each distinct connection is
 * traced against the candidate with the tracer (control/trace.ts), which is
 * the data plane's own decision path; the answer lists those whose verdict
 * would change (allowed now, refused by the candidate, or the reverse),
 * grouped by the candidate rule that decides them.
 *
 * What cannot be replayed is listed with why, never guessed: ICMP (the flow
 * log does not keep its type), lines that are not decisions or not JSON,
 * connections neither end of which is a workload of the candidate.
 */
import type { CompiledPolicy } from '../policy/compile.js';
import { parsePacketSpec, policyTrace, type TraceResult } from './trace.js';

export interface RecordedConnection {
  proto: string;
  src: string;
  sport: number;
  dst: string;
  dport: number;
  from: string | null;
  to: string | null;
  /** What the policy in force did: allow, drop or reject. */
  verdict: string;
  section: string | null;
  rule: string | null;
}

export interface WhatIfChange extends RecordedConnection {
  /** Times it was seen (decisions in the log, entries in the flow table). */
  seen: number;
  candidate: { verdict: string; outcome: string; section: string | null; rule: string };
}

export interface WhatIfResult {
  /** Distinct connections replayed against the candidate. */
  replayed: number;
  changed: WhatIfChange[];
  /** The changes by the candidate rule that decides them. */
  byRule: Array<{ section: string | null; rule: string; verdict: string; connections: number }>;
  skipped: Array<{ what: string; why: string }>;
}

const allowed = (verdict: string) => verdict === 'allow' || verdict === 'allowed';

function endpoint(addr: string, port: number): string {
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

/** The rule that decided a trace: the first point that refused it, else the last point that allowed it (null rule: the default). */
function decidingRule(tr: TraceResult): { section: string | null; rule: string } {
  const points = tr.steps.filter((s) => s.point === 'egress' || s.point === 'ingress');
  const refused = points.find((s) => s.verdict !== 'allow');
  const step = refused ?? points.at(-1);
  if (!step) return { section: null, rule: '(not a policy decision)' };
  return step.rule ? { section: step.rule.section, rule: step.rule.id } : { section: null, rule: 'default' };
}

/** Recorded connections from flow-log text (decision events); what cannot be used goes to `skipped`. */
export function connectionsFromFlowLog(text: string, skipped: WhatIfResult['skipped']): RecordedConnection[] {
  const out: RecordedConnection[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let j: Record<string, unknown>;
    try {
      j = JSON.parse(line) as Record<string, unknown>;
    } catch {
      skipped.push({ what: `line ${i + 1}`, why: 'not JSON' });
      return;
    }
    if (j.event !== 'decision') return; // closes and suppression counts are not decisions
    const proto = String(j.proto);
    if (proto === 'icmp' || proto === 'icmpv6' || proto === 'ether') {
      skipped.push({ what: `line ${i + 1}`, why: `${proto}: the flow log does not keep what a replay needs (the ICMP type, the frame)` });
      return;
    }
    if (typeof j.src !== 'string' || typeof j.dst !== 'string') {
      skipped.push({ what: `line ${i + 1}`, why: 'no addresses' });
      return;
    }
    out.push({
      proto, src: j.src, sport: Number(j.sport), dst: j.dst, dport: Number(j.dport),
      from: typeof j.from === 'string' ? j.from : null, to: typeof j.to === 'string' ? j.to : null,
      verdict: String(j.verdict), section: typeof j.section === 'string' ? j.section : null, rule: typeof j.rule === 'string' ? j.rule : null,
    });
  });
  return out;
}

/** Replay recorded connections against a candidate policy. */
export function whatIf(candidate: CompiledPolicy, recorded: RecordedConnection[], skipped: WhatIfResult['skipped'] = []): WhatIfResult {
  const distinct = new Map<string, { c: RecordedConnection; seen: number }>();
  for (const c of recorded) {
    const key = `${c.proto} ${endpoint(c.src, c.sport)} ${endpoint(c.dst, c.dport)} ${c.from} ${c.to} ${allowed(c.verdict)}`;
    const d = distinct.get(key);
    if (d) d.seen++; else distinct.set(key, { c, seen: 1 });
  }
  const changed: WhatIfChange[] = [];
  let replayed = 0;
  for (const { c, seen } of distinct.values()) {
    const packet = `${c.proto} ${endpoint(c.src, c.sport)} -> ${endpoint(c.dst, c.dport)}`;
    const workloads = candidate.policy.workloads;
    const from = c.from !== null && workloads.has(c.from) ? c.from : undefined;
    const to = c.to !== null && workloads.has(c.to) ? c.to : undefined;
    let tr: TraceResult;
    try {
      tr = policyTrace(candidate, parsePacketSpec(packet), { from, to });
    } catch (e) {
      skipped.push({ what: packet, why: (e as Error).message });
      continue;
    }
    replayed++;
    if (allowed(c.verdict) === (tr.verdict === 'allow')) continue;
    changed.push({ ...c, seen, candidate: { verdict: tr.verdict, outcome: tr.outcome, ...decidingRule(tr) } });
  }
  const groups = new Map<string, WhatIfResult['byRule'][number]>();
  for (const ch of changed) {
    const k = `${ch.candidate.section}\u0000${ch.candidate.rule}\u0000${ch.candidate.verdict}`;
    const g = groups.get(k) ?? { section: ch.candidate.section, rule: ch.candidate.rule, verdict: ch.candidate.verdict, connections: 0 };
    g.connections++;
    groups.set(k, g);
  }
  return { replayed, changed, byRule: [...groups.values()].sort((a, b) => b.connections - a.connections), skipped };
}

export function formatWhatIf(r: WhatIfResult): string {
  const lines = [`${r.replayed} connections replayed; ${r.changed.length} would change${r.skipped.length ? `; ${r.skipped.length} not replayable` : ''}`];
  for (const g of r.byRule) {
    lines.push(`${g.section ? `${g.section}/` : ''}${g.rule}: ${g.connections} connection(s) would be ${g.verdict === 'allow' ? 'allowed' : g.verdict === 'reject' ? 'rejected' : 'dropped'}`);
    for (const c of r.changed.filter((x) => x.candidate.rule === g.rule && x.candidate.section === g.section && x.candidate.verdict === g.verdict)) {
      lines.push(`  ${c.proto} ${c.from ?? c.src}:${c.sport} -> ${c.to ?? c.dst}:${c.dport} (${c.src} -> ${c.dst}): now ${c.verdict}${c.rule ? ` by ${c.section ? `${c.section}/` : ''}${c.rule}` : ''}, seen ${c.seen}x`);
    }
  }
  for (const s of r.skipped.slice(0, 20)) lines.push(`not replayed: ${s.what}: ${s.why}`);
  if (r.skipped.length > 20) lines.push(`not replayed: ${r.skipped.length - 20} more`);
  return lines.join('\n');
}
