/**
 * The tracer: what the policy does with one packet, and why.
 *
 * It runs the packet through the same compiled tables the data plane uses
 * (policy/compile.ts and the rule trie), at each point the packet crosses:
 * SpoofGuard and egress at the sending workload's vNIC, then ingress at the
 * receiving workload's vNIC. An address no workload owns is outside, and
 * traffic to or from it is checked only at the one vNIC it crosses.
 */
import { addressText, parsePrefix, prefixContains, type Family, type Prefix } from '../policy/addresses.js';
import { pointClassify, ruleServices, type CompiledPolicy, type Direction } from '../policy/compile.js';
import { keyWrite } from '../packet/key.js';
import type { Action, Rule } from '../policy/model.js';
import { ICMP_TYPES, ICMPV6_TYPES, PROTO, isPorted, serviceAtomText } from '../policy/services.js';
import { spoofCheck } from '../policy/spoofguard.js';

export interface PacketSpec {
  family: Family;
  proto: number;
  src: Prefix;
  dst: Prefix;
  /** Source port, or ICMP type. */
  sport: number;
  /** Destination port, or ICMP code. */
  dport: number;
  text: string;
}

export class TraceSpecError extends Error {
  readonly code = 'TRACE_SPEC';
  override readonly name = 'TraceSpecError';
}

const PROTO_WORDS: Record<string, number> = { tcp: PROTO.tcp, udp: PROTO.udp, sctp: PROTO.sctp, icmp: PROTO.icmp, icmpv6: PROTO.icmpv6 };

function endpoint(text: string, ported: boolean, side: string): { addr: Prefix; port: number | null } {
  let host = text, port: string | null = null;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (v6) { host = v6[1]; port = v6[2] ?? null; }
  else if (/^[\d.]+:\d+$/.test(text)) { [host, port] = text.split(':'); }
  const addr = parsePrefix(host);
  if (!addr || host.includes('/')) throw new TraceSpecError(`the ${side} '${text}' is not an address (10.0.0.1, 10.0.0.1:80, fd00::1 or [fd00::1]:80)`);
  if (port !== null && !ported) throw new TraceSpecError(`the ${side} '${text}' has a port, but the protocol has none`);
  const n = port === null ? null : Number(port);
  if (n !== null && n > 65535) throw new TraceSpecError(`port ${n} is out of range 0-65535`);
  return { addr, port: n };
}

/**
 * Parse `tcp 10.0.0.11:40000 -> 10.0.0.21:5432`, `udp [fd00::1]:5353 -> [fd00::2]:53`,
 * `icmp 10.0.0.1 -> 10.0.0.2 echo-request`, `icmpv6 fd00::1 -> fd00::2 128/0`,
 * `ip/47 10.0.0.1 -> 10.0.0.2`.
 */
export function parsePacketSpec(text: string): PacketSpec {
  const t = text.trim().split(/\s+/);
  const usage = `expected 'PROTO SRC[:PORT] -> DST[:PORT]' (PROTO: tcp, udp, sctp, icmp, icmpv6 or ip/N), found '${text}'`;
  if (t.length < 4 || t[2] !== '->') throw new TraceSpecError(usage);
  const word = t[0].toLowerCase();
  let proto: number;
  if (word in PROTO_WORDS) proto = PROTO_WORDS[word];
  else if (/^ip\/\d{1,3}$/.test(word) && Number(word.slice(3)) <= 255) proto = Number(word.slice(3));
  else throw new TraceSpecError(usage);
  const ported = isPorted(proto);
  const s = endpoint(t[1], ported, 'source');
  const d = endpoint(t[3], ported, 'destination');
  if (s.addr.family !== d.addr.family) throw new TraceSpecError('source and destination are of different IP families');
  const family = s.addr.family;
  if (proto === PROTO.icmp && family === 6) throw new TraceSpecError('icmp is IPv4: use icmpv6 for IPv6');
  if (proto === PROTO.icmpv6 && family === 4) throw new TraceSpecError('icmpv6 is IPv6: use icmp for IPv4');
  let sport = 0, dport = 0;
  const rest = t.slice(4);
  if (ported) {
    if (d.port === null) throw new TraceSpecError(`the destination needs a port, like 10.0.0.21:5432 or [fd00::21]:443`);
    if (rest.length > 0) throw new TraceSpecError(`unexpected '${rest.join(' ')}' after the destination`);
    sport = s.port ?? 49152;
    dport = d.port;
  } else if (proto === PROTO.icmp || proto === PROTO.icmpv6) {
    const names = proto === PROTO.icmp ? ICMP_TYPES : ICMPV6_TYPES;
    let typeText = 'echo-request', codeText = '0';
    if (rest.length === 1) [typeText, codeText = '0'] = rest[0].split('/');
    else if (rest.length === 4 && rest[0] === 'type' && rest[2] === 'code') { typeText = rest[1]; codeText = rest[3]; }
    else if (rest.length === 2 && rest[0] === 'type') typeText = rest[1];
    else if (rest.length !== 0) throw new TraceSpecError(`expected an ICMP type like echo-request, 8, 3/4 or 'type 3 code 4', found '${rest.join(' ')}'`);
    const type = typeText in names ? names[typeText] : /^\d+$/.test(typeText) ? Number(typeText) : NaN;
    const code = /^\d+$/.test(codeText) ? Number(codeText) : NaN;
    if (!(type >= 0 && type <= 255)) throw new TraceSpecError(`unknown ICMP type '${typeText}' (a number 0-255 or one of ${Object.keys(names).join(', ')})`);
    if (!(code >= 0 && code <= 255)) throw new TraceSpecError(`ICMP code '${codeText}' is not a number 0-255`);
    sport = type;
    dport = code;
  } else if (rest.length > 0) throw new TraceSpecError(`unexpected '${rest.join(' ')}' after the destination`);
  return { family, proto, src: s.addr, dst: d.addr, sport, dport, text: t.join(' ') };
}

export interface TraceStep {
  point: 'spoofguard' | Direction;
  workload: string;
  nic: string;
  verdict: Action;
  /** The deciding rule, or null for the default (or SpoofGuard). */
  rule: null | { section: string; id: string; path: string; stateless: boolean; log: boolean; comment: string };
  reason: string;
  why: string[];
}

export interface TraceResult {
  packet: string;
  from: string | null;
  to: string | null;
  steps: TraceStep[];
  verdict: Action;
  /** What happens to the replies. */
  replies: string;
}

function ownerOf(compiled: CompiledPolicy, addr: Prefix): string | null {
  for (const w of compiled.policy.workloads.values()) {
    if (w.ips.some((p) => prefixContains(p, addr))) return w.name;
  }
  return null;
}

/** Why an address matched a rule side: which group or CIDR, through which workload. */
function explainSide(compiled: CompiledPolicy, refs: Rule['from'], addr: Prefix, label: string): string {
  const text = addressText(addr.family, addr.words);
  for (const r of refs) {
    if (r.kind === 'any') return `${label} ${text} matches any`;
    if (r.kind === 'cidr' && prefixContains(r.prefix, addr)) return `${label} ${text} is in ${r.prefix.text}`;
    if (r.kind === 'group') {
      const g = compiled.groups.get(r.name);
      if (!g || !g.addresses.any && !g.addresses.prefixes.some((p) => prefixContains(p, addr))) continue;
      const member = [...g.members].find((m) => compiled.policy.workloads.get(m)!.ips.some((p) => prefixContains(p, addr)));
      if (member) {
        const def = compiled.policy.groups.get(r.name)!;
        const w = compiled.policy.workloads.get(member)!;
        const tags = w.tags.filter((t) => def.tagsAnyOf.includes(t) || def.tagsAllOf.includes(t));
        const how = def.workloads.includes(member) ? 'named in the group' : tags.length > 0 ? `tag ${tags.join(', ')}` : 'a nested group';
        return `${label} ${text} is in group ${r.name} (workload ${member}, ${how})`;
      }
      return `${label} ${text} is in group ${r.name} (by CIDR)`;
    }
  }
  return `${label} ${text} matches`;
}

function explainService(compiled: CompiledPolicy, rule: Rule, spec: PacketSpec): string {
  for (const s of rule.services) {
    if (s.kind === 'any') return 'service: any';
    const atoms = s.kind === 'inline' ? s.atoms : compiled.policy.services.get(s.name)?.atoms ?? [];
    const hit = atoms.find((a) => a.kind === 'ip' && (a.proto < 0 || a.proto === spec.proto) && spec.sport >= a.sport[0] && spec.sport <= a.sport[1] && spec.dport >= a.dport[0] && spec.dport <= a.dport[1]);
    if (hit) return `service: ${s.kind === 'named' ? `${s.name} (${serviceAtomText(hit)})` : serviceAtomText(hit)}`;
  }
  return `service: ${ruleServices(rule, compiled.policy).map(serviceAtomText).join(', ')}`;
}

const scratchKey = new Int32Array(16);

function decide(compiled: CompiledPolicy, workload: string, direction: Direction, spec: PacketSpec): TraceStep {
  const w = compiled.policy.workloads.get(workload)!;
  const point = compiled.points.get(w.nic)![direction];
  keyWrite(scratchKey, 0, spec.family, spec.src.words, spec.dst.words, spec.proto, spec.sport, spec.dport);
  const order = pointClassify(point.tables, spec.family, scratchKey, 0);
  if (order < 0) {
    return {
      point: direction, workload, nic: w.nic, verdict: compiled.defaultAction, rule: null,
      reason: `no rule matched: the default action is ${compiled.defaultAction}`, why: [],
    };
  }
  const rule = compiled.rules[order];
  return {
    point: direction, workload, nic: w.nic, verdict: rule.action,
    rule: { section: rule.section, id: rule.id, path: rule.path, stateless: rule.stateless, log: rule.log, comment: rule.comment },
    reason: `rule ${rule.id} in section ${rule.section} (${rule.path})`,
    why: [explainSide(compiled, rule.from, spec.src, 'from'), explainSide(compiled, rule.to, spec.dst, 'to'), explainService(compiled, rule, spec)],
  };
}

export interface TraceOptions {
  /** The sending workload; by default the owner of the source address. */
  from?: string;
  /** The receiving workload; by default the owner of the destination address. */
  to?: string;
}

export function policyTrace(compiled: CompiledPolicy, spec: PacketSpec, opts: TraceOptions = {}): TraceResult {
  const workloads = compiled.policy.workloads;
  for (const [flag, name] of [['--from', opts.from], ['--to', opts.to]] as const) {
    if (name !== undefined && !workloads.has(name)) throw new TraceSpecError(`${flag}: no workload named '${name}'`);
  }
  const from = opts.from ?? ownerOf(compiled, spec.src);
  const to = opts.to ?? ownerOf(compiled, spec.dst);
  if (from === null && to === null) {
    throw new TraceSpecError(`neither ${addressText(spec.src.family, spec.src.words)} nor ${addressText(spec.dst.family, spec.dst.words)} belongs to a workload, so the packet crosses no vNIC: name one with --from or --to`);
  }
  const steps: TraceStep[] = [];
  let verdict: Action = 'allow';
  let statefulAllow = true;
  if (from !== null) {
    const w = workloads.get(from)!;
    if (compiled.policy.spoofguard) {
      const s = spoofCheck(w, spec.family, spec.src.words, spec.proto, spec.sport, spec.dport);
      steps.push({ point: 'spoofguard', workload: from, nic: w.nic, verdict: s.ok ? 'allow' : 'drop', rule: null, reason: s.ok ? 'source address belongs to the vNIC' : 'spoof: dropped by SpoofGuard', why: [s.why] });
      if (!s.ok) verdict = 'drop';
    }
    if (verdict === 'allow') {
      const step = decide(compiled, from, 'egress', spec);
      steps.push(step);
      verdict = step.verdict;
      if (step.rule?.stateless) statefulAllow = false;
    }
  }
  if (to !== null && verdict === 'allow' && to !== from) {
    const step = decide(compiled, to, 'ingress', spec);
    steps.push(step);
    verdict = step.verdict;
    if (step.rule?.stateless) statefulAllow = false;
  }
  let replies: string;
  if (verdict !== 'allow') replies = 'none: the connection is not allowed';
  else if (!statefulAllow) replies = 'a stateless rule decided: replies are checked against the policy on their own';
  else if (spec.proto === PROTO.tcp || spec.proto === PROTO.udp || spec.proto === PROTO.sctp || spec.proto === PROTO.icmp || spec.proto === PROTO.icmpv6) {
    replies = 'stateful: replies of this connection pass';
  } else replies = 'stateful: replies with the addresses swapped pass';
  return { packet: spec.text, from, to, steps, verdict, replies };
}

export function formatTrace(r: TraceResult): string {
  const lines = [`packet   ${r.packet}`, `from     ${r.from ?? 'outside (no workload owns the source)'}`, `to       ${r.to ?? 'outside (no workload owns the destination)'}`];
  r.steps.forEach((s, i) => {
    const where = s.point === 'spoofguard' ? `SpoofGuard at ${s.workload} (${s.nic})` : `${s.point} at ${s.workload} (${s.nic})`;
    lines.push(`${i + 1}. ${where}: ${s.verdict.toUpperCase()}: ${s.reason}`);
    for (const w of s.why) lines.push(`     ${w}`);
    if (s.rule?.comment) lines.push(`     comment: ${s.rule.comment}`);
  });
  lines.push(`verdict  ${r.verdict.toUpperCase()}`);
  lines.push(`replies  ${r.replies}`);
  return lines.join('\n');
}
