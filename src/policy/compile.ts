/**
 * The policy compiler: validated model -> per-vNIC rule tries.
 *
 * Passes (each one's output can be dumped with `tapwall compile --dump`):
 *   1. resolve   groups -> member workloads and address prefixes (aggregated)
 *   2. expand    for every vNIC and direction, the rules that apply there (by
 *                appliedTo, not disabled), in precedence order, each expanded
 *                into atoms: source prefix x destination prefix x service.
 *                Atoms of one rule are contiguous and rules keep their order,
 *                so the first matching atom belongs to the first matching rule.
 *   3. build     per point and IP family, a RuleTrie over the atoms' boxes,
 *                plus a short list for non-IP EtherType rules. Points whose
 *                rule lists are identical share one set of tries.
 *
 * The result is immutable: a change compiles a new CompiledPolicy off to the
 * side and the caller swaps one reference.
 *
 * Incremental recompilation: given the previous CompiledPolicy, a point whose
 * rules resolve to exactly the same atoms (same rule orders, same resolved
 * source and destination prefixes, same services) reuses the previous tries
 * instead of building them again. A tag change therefore rebuilds only the
 * vNICs whose rules changed; `stats.reused` says how many table sets were kept.
 */
import { trieBuild, trieLookup, type RuleTrie } from '../classify/ruleTrie.js';
import { KEY_V4, KEY_V6 } from '../packet/key.js';
import { prefixAggregate, prefixWordRange, type Family, type Prefix } from './addresses.js';
import type { Action, Group, Policy, Rule, Workload } from './model.js';
import { ANY_SERVICE, type IpServiceAtom, type ServiceAtom } from './services.js';

export type Direction = 'egress' | 'ingress';

/** An address side after resolution: every address, or a list of prefixes (maybe empty). */
export type AddressSet = { any: true } | { any: false; prefixes: Prefix[] };

export interface Atom {
  rule: number;
  src: Prefix | null;
  dst: Prefix | null;
  service: ServiceAtom;
}

/** The compiled form for one IP family at one point. */
export interface FamilyTable {
  trie: RuleTrie;
  /** Atom index (= trie rule index) -> rule order. */
  atomRule: Int32Array;
  atoms: Atom[];
}

export interface PointTables {
  v4: FamilyTable;
  v6: FamilyTable;
  /** Pairs (ethertype, rule order) in precedence order, for non-IP frames. */
  ether: Int32Array;
  /** Rule orders that apply here, in precedence order. */
  rules: number[];
}

export interface CompiledPoint {
  workload: string;
  nic: string;
  direction: Direction;
  tables: PointTables;
}

export interface CompiledPolicy {
  policy: Policy;
  /** Rules by order (precedence). */
  rules: Rule[];
  /** 0 allow, 1 drop, 2 reject, by rule order; default action in `defaultAction`. */
  ruleAction: Uint8Array;
  /** RULE_FLAG bits by rule order. */
  ruleFlags: Uint8Array;
  defaultAction: Action;
  groups: Map<string, { members: Set<string>; addresses: AddressSet }>;
  points: Map<string, { egress: CompiledPoint; ingress: CompiledPoint }>;
  stats: { rules: number; atoms: number; tries: number; bytes: number; buildMs: number; reused: number };
  /** Point tables by content signature, for the next incremental compile. */
  tablesBySignature: Map<string, PointTables>;
}

export const ACTION_CODE: Record<Action, number> = { allow: 0, drop: 1, reject: 2 };
export const RULE_FLAG = { stateless: 1, log: 2 } as const;

/** Pass 1: group membership and addresses, with nested groups flattened. */
export function resolveGroups(policy: Policy): CompiledPolicy['groups'] {
  const out: CompiledPolicy['groups'] = new Map();
  const resolving = new Set<string>();
  const resolve = (name: string): { members: Set<string>; addresses: AddressSet } => {
    const done = out.get(name);
    if (done) return done;
    const g = policy.groups.get(name) as Group;
    resolving.add(name);
    const members = new Set<string>();
    for (const w of policy.workloads.values()) {
      const anyOf = g.tagsAnyOf.length > 0 && g.tagsAnyOf.some((t) => w.tags.includes(t));
      const allOf = g.tagsAllOf.length > 0 && g.tagsAllOf.every((t) => w.tags.includes(t));
      if (anyOf || allOf || g.workloads.includes(w.name)) members.add(w.name);
    }
    const prefixes: Prefix[] = [...g.cidrs];
    for (const sub of g.groups) {
      if (resolving.has(sub)) continue; // validation rejects cycles; stay finite anyway
      const r = resolve(sub);
      for (const m of r.members) members.add(m);
      if (r.addresses.any) prefixes.push(...ANY_PREFIXES);
      else prefixes.push(...r.addresses.prefixes);
    }
    for (const m of members) prefixes.push(...(policy.workloads.get(m) as Workload).ips);
    const result = { members, addresses: { any: false as const, prefixes: prefixAggregate(prefixes) } };
    resolving.delete(name);
    out.set(name, result);
    return result;
  };
  for (const name of policy.groups.keys()) resolve(name);
  return out;
}

const ANY_PREFIXES: Prefix[] = [
  { family: 4, words: [0, 0, 0, 0], len: 0, text: '0.0.0.0/0' },
  { family: 6, words: [0, 0, 0, 0], len: 0, text: '::/0' },
];

export function ruleAddresses(refs: Rule['from'], groups: CompiledPolicy['groups']): AddressSet {
  const prefixes: Prefix[] = [];
  for (const r of refs) {
    if (r.kind === 'any') return { any: true };
    if (r.kind === 'cidr') prefixes.push(r.prefix);
    else {
      const a = groups.get(r.name)?.addresses;
      if (a?.any) return { any: true };
      if (a) prefixes.push(...a.prefixes);
    }
  }
  return { any: false, prefixes: prefixAggregate(prefixes) };
}

export function ruleServices(rule: Rule, policy: Policy): ServiceAtom[] {
  const out: ServiceAtom[] = [];
  for (const s of rule.services) {
    if (s.kind === 'any') return [ANY_SERVICE];
    if (s.kind === 'inline') out.push(...s.atoms);
    else out.push(...(policy.services.get(s.name)?.atoms ?? []));
  }
  return out;
}

/** Does the rule apply at this workload's vNIC? */
export function ruleAppliesAt(rule: Rule, workload: string, groups: CompiledPolicy['groups']): boolean {
  if (rule.disabled) return false;
  if (rule.appliedTo.length === 0) return true;
  return rule.appliedTo.some((g) => groups.get(g)?.members.has(workload) ?? false);
}

/** Pass 2 for one rule: its atoms (the same at every point where it applies). */
export function expandRule(rule: Rule, policy: Policy, groups: CompiledPolicy['groups']): Atom[] {
  const src = ruleAddresses(rule.from, groups);
  const dst = ruleAddresses(rule.to, groups);
  const services = ruleServices(rule, policy);
  const srcList: Array<Prefix | null> = src.any ? [null] : src.prefixes;
  const dstList: Array<Prefix | null> = dst.any ? [null] : dst.prefixes;
  const atoms: Atom[] = [];
  for (const service of services) {
    if (service.kind === 'ether') {
      atoms.push({ rule: rule.order, src: null, dst: null, service });
      continue;
    }
    for (const s of srcList) {
      for (const d of dstList) {
        // Both sides must be of one family, and the service must fit it.
        const fam = s?.family ?? d?.family ?? 0;
        if (s && d && s.family !== d.family) continue;
        if (fam !== 0 && service.family !== 0 && service.family !== fam) continue;
        atoms.push({ rule: rule.order, src: s, dst: d, service });
      }
    }
  }
  return atoms;
}

function atomFits(a: Atom, family: Family): boolean {
  if (a.service.kind !== 'ip') return false;
  if (a.src && a.src.family !== family) return false;
  if (a.dst && a.dst.family !== family) return false;
  return a.service.family === 0 || a.service.family === family;
}

/** Pass 3 for one family: boxes for the trie. */
export function buildFamilyTable(atoms: Atom[], family: Family): FamilyTable {
  const layout = family === 4 ? KEY_V4 : KEY_V6;
  const words = family === 4 ? 1 : 4;
  const fit = atoms.filter((a) => atomFits(a, family));
  const dims = layout.dims;
  const lo = new Uint32Array(fit.length * dims);
  const hi = new Uint32Array(fit.length * dims);
  fit.forEach((a, i) => {
    const o = i * dims;
    for (let w = 0; w < words; w++) {
      const [sl, sh] = a.src ? prefixWordRange(a.src, w) : [0, 0xffffffff];
      const [dl, dh] = a.dst ? prefixWordRange(a.dst, w) : [0, 0xffffffff];
      lo[o + layout.src + w] = sl; hi[o + layout.src + w] = sh;
      lo[o + layout.dst + w] = dl; hi[o + layout.dst + w] = dh;
    }
    const s = a.service as IpServiceAtom;
    lo[o + layout.proto] = s.proto < 0 ? 0 : s.proto;
    hi[o + layout.proto] = s.proto < 0 ? 255 : s.proto;
    lo[o + layout.sport] = s.sport[0]; hi[o + layout.sport] = s.sport[1];
    lo[o + layout.dport] = s.dport[0]; hi[o + layout.dport] = s.dport[1];
  });
  const trie = trieBuild(dims, fit.length, lo, hi, family === 4 ? {} : { srcDims: [KEY_V6.src], dstDims: [KEY_V6.dst] });
  return { trie, atomRule: Int32Array.from(fit.map((a) => a.rule)), atoms: fit };
}

/** What a rule's atoms depend on, as text: equal keys mean equal atoms. */
function ruleKey(rule: Rule, policy: Policy, groups: CompiledPolicy['groups']): string {
  const side = (refs: Rule['from']) => {
    const a = ruleAddresses(refs, groups);
    return a.any ? '*' : a.prefixes.map((p) => p.text).join(',');
  };
  const services = rule.services.map((s) => (s.kind === 'any' ? '*' : s.kind === 'inline' ? s.text : `${s.name}=${policy.services.get(s.name)?.specs.join('+') ?? ''}`)).join(',');
  return `${rule.order}|${side(rule.from)}|${side(rule.to)}|${services}`;
}

export function policyCompile(policy: Policy, previous: CompiledPolicy | null = null): CompiledPolicy {
  const started = performance.now();
  const rules = policy.sections.flatMap((s) => s.rules);
  const groups = resolveGroups(policy);
  const keys = rules.map((r) => (r.disabled ? '' : ruleKey(r, policy, groups)));
  const ruleAtoms: Array<Atom[] | null> = rules.map(() => null);
  const atomsOf = (o: number): Atom[] => (ruleAtoms[o] ??= rules[o].disabled ? [] : expandRule(rules[o], policy, groups));
  const shared = new Map<string, PointTables>();
  const points: CompiledPolicy['points'] = new Map();
  let atomsTotal = 0, bytes = 0, reused = 0;
  for (const w of policy.workloads.values()) {
    const applicable = rules.filter((r) => ruleAppliesAt(r, w.name, groups)).map((r) => r.order);
    const signature = applicable.map((o) => keys[o]).join('\n');
    let tables = shared.get(signature);
    if (!tables) {
      tables = previous?.tablesBySignature.get(signature);
      if (tables) reused++;
      else {
        const atoms = applicable.flatMap(atomsOf);
        const ether: number[] = [];
        for (const a of atoms) if (a.service.kind === 'ether') ether.push(a.service.ethertype, a.rule);
        tables = { v4: buildFamilyTable(atoms, 4), v6: buildFamilyTable(atoms, 6), ether: Int32Array.from(ether), rules: applicable };
      }
      shared.set(signature, tables);
      atomsTotal += tables.v4.atoms.length + tables.v6.atoms.length + tables.ether.length / 2;
      bytes += tables.v4.trie.stats.bytes + tables.v6.trie.stats.bytes + tables.ether.byteLength;
    }
    // Ingress and egress read the same rule list: from/to pick the direction.
    points.set(w.nic, {
      egress: { workload: w.name, nic: w.nic, direction: 'egress', tables },
      ingress: { workload: w.name, nic: w.nic, direction: 'ingress', tables },
    });
  }
  const ruleAction = Uint8Array.from(rules.map((r) => ACTION_CODE[r.action]));
  const ruleFlags = Uint8Array.from(rules.map((r) => (r.stateless ? RULE_FLAG.stateless : 0) | (r.log ? RULE_FLAG.log : 0)));
  return {
    policy,
    rules,
    ruleAction,
    ruleFlags,
    defaultAction: policy.default,
    groups,
    points,
    stats: { rules: rules.length, atoms: atomsTotal, tries: shared.size * 2, bytes, buildMs: performance.now() - started, reused },
    tablesBySignature: shared,
  };
}

/** First matching rule order for an IP key at a point, or -1 (then the default applies). */
export function pointClassify(tables: PointTables, family: Family, key: Int32Array, keyOff: number): number {
  const t = family === 4 ? tables.v4 : tables.v6;
  const atom = trieLookup(t.trie, key, keyOff);
  return atom < 0 ? -1 : t.atomRule[atom];
}

/** First matching rule order for a non-IP EtherType at a point, or -1. */
export function pointClassifyEther(tables: PointTables, ethertype: number): number {
  const e = tables.ether;
  for (let i = 0; i < e.length; i += 2) if (e[i] === ethertype) return e[i + 1];
  return -1;
}
