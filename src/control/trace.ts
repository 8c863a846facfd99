/**
 * The tracer: what the data plane does with one packet, and why.
 *
 * A packet description (`tcp 10.0.1.11:40000 -> 10.0.2.21:8080`) becomes the
 * frame its sender's vNIC would send as the first packet of a connection
 * (a TCP SYN, an ICMP message of the given type, a well-formed neighbour
 * solicitation...), and that frame goes through the data plane's own
 * decision path (datapath/frameDecide.ts) on a fresh switch with the same
 * ports, with an explain hook recording each step. The outcome is the data
 * plane's by construction; this file only puts it into words (which rule,
 * which group or CIDR, which service). An address no workload owns is
 * outside, behind the uplink, and traffic to or from it crosses one vNIC.
 */
import { addressText, parsePrefix, prefixContains, type Family, type Prefix } from '../policy/addresses.js';
import { ruleServices, type CompiledPolicy, type Direction } from '../policy/compile.js';
import { rulePlace, type Action, type Rule } from '../policy/model.js';
import { ICMP_TYPES, ICMPV6_TYPES, PROTO, isPorted, serviceAtomText } from '../policy/services.js';
import { workloadPrefixes } from '../policy/addresses.js';
import { spoofCheck } from '../datapath/spoofguard.js';
import { FlowTable } from '../flow/flowTable.js';
import { frameBuild, ndFrame } from '../packet/build.js';
import { ICMP, PKT, TCP_SYN } from '../packet/parse.js';
import { OUTCOME_NAMES, Outcome, type OutcomeName } from '../packet/verdict.js';
import { Switch, frameDecide, type Explain, type SwitchPort } from '../datapath/frameDecide.js';

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
  /** Where: spoofguard, egress, ingress (policy points), or a stage of the decision path (parse, vlan, switch, arp, nd, rate, policy, fragments, conntrack). */
  point: string;
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
  /** What the data plane counts it as: forward, or the named drop reason. */
  outcome: OutcomeName;
  /** The port it leaves by, when forwarded (the first of them for a multicast or broadcast packet). */
  port: string | null;
  /** Every port it leaves by: one, or for a multicast or broadcast packet each port whose policy takes it. */
  ports: string[];
  /** What happens to the replies. */
  replies: string;
}

function ownerOf(compiled: CompiledPolicy, addr: Prefix): string | null {
  for (const w of compiled.policy.workloads.values()) {
    if (workloadPrefixes(w).some((p) => prefixContains(p, addr))) return w.name;
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
      const member = [...g.members].find((m) => workloadPrefixes(compiled.policy.workloads.get(m)!).some((p) => prefixContains(p, addr)));
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

function ruleStep(compiled: CompiledPolicy, workload: string, direction: Direction, order: number, spec: PacketSpec | null): TraceStep {
  const w = compiled.policy.workloads.get(workload)!;
  if (order < 0) {
    return {
      point: direction, workload, nic: w.nic, verdict: compiled.defaultAction, rule: null,
      reason: `no rule matched: the default action is ${compiled.defaultAction}`, why: [],
    };
  }
  const rule = compiled.rules[order];
  const { path } = rulePlace(compiled.policy, order);
  return {
    point: direction, workload, nic: w.nic, verdict: rule.action,
    rule: { section: rule.section, id: rule.id, path, stateless: rule.stateless, log: rule.log, comment: rule.comment },
    reason: `rule ${rule.id} in section ${rule.section} (${path})`,
    why: spec === null ? [] : [explainSide(compiled, rule.from, spec.src, 'from'), explainSide(compiled, rule.to, spec.dst, 'to'), explainService(compiled, rule, spec)],
  };
}

export interface TraceOptions {
  /** The sending workload; by default the owner of the source address. */
  from?: string;
  /** The receiving workload; by default the owner of the destination address. */
  to?: string;
  /**
   * The ports of the data plane being explained (the daemon passes its own);
   * by default every workload's vNIC and an uplink.
   */
  ports?: SwitchPort[];
}

/** The MAC the tracer gives the far side of the uplink (a router): one no workload uses. */
function outsideMac(compiled: CompiledPolicy): string {
  const used = new Set([...compiled.policy.workloads.values()].map((w) => w.mac));
  for (let i = 0xfe; ; i--) {
    const mac = `02:ff:ff:ff:ff:${i.toString(16).padStart(2, '0')}`;
    if (!used.has(mac)) return mac;
  }
}

const OUTCOME_WORDS: Partial<Record<OutcomeName, string>> = {
  forward: 'forwarded',
  invalid_state: 'no connection: only a packet that opens one (TCP SYN, UDP, ICMP echo request, other IP) may pass without a tracked connection, and ICMP errors must quote one',
  table_full: 'the flow table is full',
  quota: "the vNIC's flow quota is used up",
};

/** Collects the decision path's steps. */
class TraceExplain implements Explain {
  readonly steps: Array<{ stage: string; outcome: number; why: string; port: number }> = [];
  step(stage: string, outcome: number, why: string, port = -1): void {
    this.steps.push({ stage, outcome, why, port });
  }
}

function defaultPorts(compiled: CompiledPolicy): SwitchPort[] {
  return [...[...compiled.policy.workloads.values()].map((w) => ({ name: w.nic, workload: w.name })), { name: 'uplink', workload: null }];
}

function traceSwitch(compiled: CompiledPolicy, ports: SwitchPort[]): Switch {
  return new Switch(compiled, ports, new FlowTable({ capacity: 64, maxPorts: Math.max(1, ports.length) }));
}

/**
 * Run one frame through the decision path of a fresh switch (no connections
 * yet), as the data plane would for a frame arriving on `arrival`. The
 * result is the data plane's outcome, by construction.
 */
export function frameTrace(compiled: CompiledPolicy, frame: Uint8Array, arrival: string, opts: { ports?: SwitchPort[]; spec?: PacketSpec | null; text?: string } = {}): TraceResult {
  const ports = opts.ports ?? defaultPorts(compiled);
  const P = ports.findIndex((p) => p.name === arrival);
  if (P < 0) throw new TraceSpecError(`no port named '${arrival}' (ports: ${ports.map((p) => p.name).join(', ')})`);
  const sw = traceSwitch(compiled, ports);
  return runTrace(compiled, sw, ports, frame, P, opts.spec ?? null, opts.text ?? `frame of ${frame.length} bytes on ${arrival}`);
}

function runTrace(compiled: CompiledPolicy, sw: Switch, ports: SwitchPort[], frame: Uint8Array, P: number, spec: PacketSpec | null, text: string): TraceResult {
  const ex = new TraceExplain();
  sw.ct.rules[0] = -3;
  sw.ct.rules[1] = -3;
  const now = 1000;
  const outcome = frameDecide(sw, frame, 0, frame.length, P, now, ex);
  const name = OUTCOME_NAMES[outcome];
  const from = sw.workloads[P]?.name ?? null;
  const dest = outcome === Outcome.forward ? sw.dest : -1;
  const destPorts = outcome === Outcome.forward ? Array.from(sw.dests.subarray(0, sw.destCount), (p) => ports[p].name) : [];
  const group = ex.steps.some((s) => s.stage === 'group');
  const pkt = sw.pkt;
  // The receiving workload: where it went, else the owner of the destination address.
  let toPort = dest;
  if (group) toPort = -1; // many receivers: each has its own step below
  else if (toPort < 0 && pkt[PKT.family] !== 0 && (sw.ct.rules[1] !== -3)) {
    toPort = sw.addrOwner(pkt[PKT.family], pkt, PKT.dst, false);
  }
  const to = toPort >= 0 ? sw.workloads[toPort]?.name ?? null : null;
  const steps: TraceStep[] = [];
  const spoofFailed = ex.steps.some((s) => s.stage === 'spoofguard');
  if (from !== null && compiled.policy.spoofguard && spec !== null && !spoofFailed) {
    const w = compiled.policy.workloads.get(from)!;
    const s = spoofCheck(w, spec.family, spec.src.words, spec.proto, spec.sport, spec.dport);
    steps.push({ point: 'spoofguard', workload: from, nic: w.nic, verdict: 'allow', rule: null, reason: 'source address belongs to the vNIC', why: [s.why] });
  }
  const rules = sw.ct.rules;
  if (rules[0] >= -1 && from !== null) steps.push(ruleStep(compiled, from, 'egress', rules[0], spec));
  if (rules[1] >= -1 && !group) {
    const ingressAt = sw.workloads[dest >= 0 ? dest : toPort >= 0 ? toPort : -1]?.name ?? to;
    if (ingressAt !== null) steps.push(ruleStep(compiled, ingressAt, 'ingress', rules[1], spec));
  }
  for (const s of ex.steps) {
    if (s.stage === 'conntrack' && (outcome === Outcome.policy || outcome === Outcome.reject)) continue; // the rule steps say it
    const at = s.port >= 0 ? sw.workloads[s.port]?.name ?? null : from ?? to;
    const w = at === null ? null : compiled.policy.workloads.get(at)!;
    const where = { workload: w?.name ?? 'uplink', nic: w?.nic ?? ports[s.port >= 0 ? s.port : P].name, rule: null, why: [] };
    if (s.outcome < 0) { steps.push({ point: s.stage, ...where, verdict: 'allow', reason: s.why }); continue; }
    const words = OUTCOME_WORDS[OUTCOME_NAMES[s.outcome]];
    steps.push({
      point: s.stage, ...where, verdict: s.outcome === Outcome.reject ? 'reject' : 'drop',
      reason: `${s.stage === 'spoofguard' ? 'spoof: dropped by SpoofGuard' : OUTCOME_NAMES[s.outcome]}: ${s.stage === 'conntrack' && words ? words : s.why}`,
    });
  }
  const verdict: Action = outcome === Outcome.forward ? 'allow' : outcome === Outcome.reject ? 'reject' : 'drop';
  let replies: string;
  if (outcome !== Outcome.forward) replies = 'none: the packet does not pass';
  else if (group) replies = 'a multicast or broadcast packet is not tracked: replies are checked against the policy on their own';
  else if (sw.ct.lastEntry < 0) {
    replies = pkt[PKT.family] !== 0 && (pkt[PKT.proto] === 6 || pkt[PKT.proto] === 17 || pkt[PKT.icmpClass] === ICMP.echoRequest)
      ? 'a stateless rule decided: replies are checked against the policy on their own'
      : 'not tracked: replies are checked against the policy on their own';
  } else replies = 'stateful: replies of this connection pass';
  return { packet: text, from, to, steps, verdict, outcome: name, port: dest >= 0 ? ports[dest].name : null, ports: destPorts, replies };
}

function macOfGroup(family: Family, words: readonly number[]): string | null {
  if (family === 4) {
    const w = words[0] >>> 0;
    if (w === 0xffffffff) return 'ff:ff:ff:ff:ff:ff';
    if (w >>> 28 !== 0xe) return null;
    return `01:00:5e:${((w >>> 16) & 0x7f).toString(16).padStart(2, '0')}:${((w >>> 8) & 255).toString(16).padStart(2, '0')}:${(w & 255).toString(16).padStart(2, '0')}`;
  }
  if (words[0] >>> 24 !== 0xff) return null;
  const w = words[3] >>> 0;
  return `33:33:${[w >>> 24, (w >>> 16) & 255, (w >>> 8) & 255, w & 255].map((x) => x.toString(16).padStart(2, '0')).join(':')}`;
}

/** The frame a packet description stands for: the first packet of its connection, as the sender's vNIC would send it. */
export function specFrame(compiled: CompiledPolicy, spec: PacketSpec, from: string | null, to: string | null): Uint8Array {
  const workloads = compiled.policy.workloads;
  const outside = outsideMac(compiled);
  const srcMac = from !== null ? workloads.get(from)!.mac : outside;
  const dstMac = to !== null ? workloads.get(to)!.mac : macOfGroup(spec.family, spec.dst.words) ?? outside;
  const src = addressText(spec.family, spec.src.words), dst = addressText(spec.family, spec.dst.words);
  if (spec.family === 6 && spec.proto === PROTO.icmpv6 && (spec.sport === 135 || spec.sport === 136)) {
    // Neighbour discovery: a solicitation for the destination address, or an advertisement of the source's.
    const ns = spec.sport === 135;
    return ndFrame({ type: ns ? 135 : 136, srcMac, dstMac, src, dst, target: ns ? dst : src, flags: ns ? 0 : 0x60 });
  }
  const icmp = spec.proto === PROTO.icmp || spec.proto === PROTO.icmpv6;
  const ndHop = spec.family === 6 && icmp && spec.sport >= 130 && spec.sport <= 143 ? (spec.sport === 133 || spec.sport === 134 || spec.sport === 137 ? 255 : 1) : undefined;
  return frameBuild({
    family: spec.family, proto: spec.proto, src, dst, srcMac, dstMac,
    sport: icmp ? undefined : spec.sport, dport: icmp ? undefined : spec.dport,
    flags: spec.proto === PROTO.tcp ? TCP_SYN : undefined,
    icmpType: icmp ? spec.sport : undefined, icmpCode: icmp ? spec.dport : undefined, id: icmp ? 7 : undefined,
    ttl: ndHop,
  });
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
  const ports = opts.ports ?? defaultPorts(compiled);
  const arrival = from !== null ? workloads.get(from)!.nic : ports.find((p) => p.workload === null)?.name;
  if (arrival === undefined) throw new TraceSpecError('the packet comes from outside, but this data plane has no uplink');
  const P = ports.findIndex((p) => p.name === arrival);
  if (P < 0) throw new TraceSpecError(`${from}'s vNIC ${arrival} is not one of the data plane's ports`);
  const sw = traceSwitch(compiled, ports);
  return runTrace(compiled, sw, ports, specFrame(compiled, spec, from, to), P, spec, spec.text);
}

export function formatTrace(r: TraceResult): string {
  const lines = [`packet   ${r.packet}`, `from     ${r.from ?? 'outside (no workload owns the source)'}`, `to       ${r.to ?? 'outside (no workload owns the destination)'}`];
  r.steps.forEach((s, i) => {
    const where = s.point === 'spoofguard' ? `SpoofGuard at ${s.workload} (${s.nic})` : `${s.point} at ${s.workload} (${s.nic})`;
    lines.push(`${i + 1}. ${where}: ${s.verdict.toUpperCase()}: ${s.reason}`);
    for (const w of s.why) lines.push(`     ${w}`);
    if (s.rule?.comment) lines.push(`     comment: ${s.rule.comment}`);
  });
  lines.push(`verdict  ${r.verdict.toUpperCase()} (outcome ${r.outcome}${r.ports.length > 0 ? `, out of ${r.ports.join(', ')}` : ''})`);
  lines.push(`replies  ${r.replies}`);
  return lines.join('\n');
}
