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
 * Incremental recompilation: given the previous CompiledPolicy, a section of
 * a point whose rules resolve to exactly the same atoms (same rule orders,
 * same resolved source and destination prefixes, same services) reuses the
 * previous tries instead of building them again. A tag change therefore
 * rebuilds only the sections, at the vNICs, whose rules changed;
 * `stats.reused` says how many section tables were kept.
 */
import { trieBuild, trieLookup, type RuleTrie } from '../classify/ruleTrie.js';
import { KEY_V4, KEY_V6 } from '../packet/key.js';
import { prefixAggregate, prefixWordRange, type Family, type Prefix } from './addresses.js';
import { groupSelects, type Action, type Group, type Policy, type Rule, type Workload } from './model.js';
import { ANY_SERVICE, type IpServiceAtom, type ServiceAtom } from './services.js';
import { workloadPrefixes } from './spoofguard.js';
import { VERDICT_OF_ACTION } from '../packet/verdict.js';

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

/**
 * One point's tables: per IP family, one trie per policy section that has
 * rules here, in precedence order (the first section with a match decides,
 * as the first matching rule would). Sections are compiled apart so that a
 * change in one (a tag moving a VM into the quarantine section's groups)
 * rebuilds that section's small trie and keeps the others.
 */
export interface PointTables {
  v4: FamilyTable[];
  v6: FamilyTable[];
  /**
   * Address resolution (ARP, neighbour discovery) per family: the same
   * sections' rules over addresses only. A rule takes part when it allows or
   * rejects some service (the peers must reach each other for that), names
   * every service, or names `arp` / `nd`; the first that matches (source,
   * target) decides: a drop denies resolution, allow and reject permit it.
   * When none matches, resolution is permitted (the packets that follow
   * still meet the policy and its default).
   */
  r4: FamilyTable[];
  r6: FamilyTable[];
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
  /** Section tables by content signature, for the next incremental compile. */
  segmentsBySignature: SegmentCache;
}

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
    for (const w of policy.workloads.values()) if (groupSelects(g, w)) members.add(w.name);
    const prefixes: Prefix[] = [...g.cidrs];
    for (const sub of g.groups) {
      if (resolving.has(sub)) continue; // validation rejects cycles; stay finite anyway
      const r = resolve(sub);
      for (const m of r.members) members.add(m);
      if (r.addresses.any) prefixes.push(...ANY_PREFIXES);
      else prefixes.push(...r.addresses.prefixes);
    }
    // A workload's addresses everywhere: its ips and the link-local address its MAC gives it.
    for (const m of members) prefixes.push(...workloadPrefixes(policy.workloads.get(m) as Workload));
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
  // Resolution services go only into the resolution tables (expandRuleResolution).
  return ruleAtoms(rule, groups, ruleServices(rule, policy).filter((s) => s.kind !== 'resolve'));
}

/** A rule's atoms for these services: source prefix x destination prefix x service, where the families agree. */
function ruleAtoms(rule: Rule, groups: CompiledPolicy['groups'], services: ServiceAtom[]): Atom[] {
  const src = ruleAddresses(rule.from, groups);
  const dst = ruleAddresses(rule.to, groups);
  const srcList: Array<Prefix | null> = src.any ? [null] : src.prefixes;
  const dstList: Array<Prefix | null> = dst.any ? [null] : dst.prefixes;
  const atoms: Atom[] = [];
  for (const service of services) {
    if (service.kind !== 'ip') {
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

/**
 * Pass 2 for address resolution: the rule's address pairs of each family,
 * with every protocol and port, when the rule takes part in resolution at
 * all (it allows or rejects something, names every service, or names arp / nd).
 */
export function expandRuleResolution(rule: Rule, policy: Policy, groups: CompiledPolicy['groups']): Atom[] {
  const families = new Set<4 | 6>();
  for (const s of ruleServices(rule, policy)) {
    if (s.kind === 'resolve') families.add(s.family);
    else if (s.kind === 'ip' && (rule.action !== 'drop' || s.proto < 0)) {
      if (s.family === 0) { families.add(4); families.add(6); } else families.add(s.family);
    }
  }
  // Every protocol and port, one service per family: the address pairs are what resolution is about.
  return ruleAtoms(rule, groups, [...families].map((family): IpServiceAtom => ({ kind: 'ip', family, proto: -1, sport: [0, 65535], dport: [0, 65535] })));
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

/**
 * What a rule's atoms depend on, apart from group contents, as text: rule
 * order, the from/to references (group names, CIDRs) and the services.
 * Cached per Rule object, which lives as long as its policy document, so a
 * tag change (same document, new group contents) costs no per-rule work.
 */
const ruleKeys = new WeakMap<Rule, { key: string; groups: string[] }>();
function ruleKey(rule: Rule, policy: Policy): { key: string; groups: string[] } {
  let k = ruleKeys.get(rule);
  if (k) return k;
  const groups: string[] = [];
  const side = (refs: Rule['from']) => refs.map((r) => {
    if (r.kind === 'any') return '*';
    if (r.kind === 'cidr') return r.prefix.text;
    groups.push(r.name);
    return `@${r.name}`;
  }).join(',');
  const services = rule.services.map((s) => (s.kind === 'any' ? '*' : s.kind === 'inline' ? s.text : `${s.name}=${policy.services.get(s.name)?.specs.join('+') ?? ''}`)).join(',');
  k = { key: `${rule.order}|${side(rule.from)}|${side(rule.to)}|${services}`, groups };
  ruleKeys.set(rule, k);
  return k;
}

/** A run of rules' keys joined, and the groups they name; cached per first Rule for contiguous runs. */
const runKeys = new WeakMap<Rule, Map<number, { keys: string; groups: string[] }>>();
function runKey(rules: Rule[], part: number[], policy: Policy): { keys: string; groups: string[] } {
  const contiguous = part[part.length - 1] - part[0] + 1 === part.length;
  const cache = contiguous ? runKeys.get(rules[part[0]]) : undefined;
  const hit = cache?.get(part.length);
  if (hit) return hit;
  const names = new Set<string>();
  const keys = part.map((o) => {
    const k = ruleKey(rules[o], policy);
    for (const g of k.groups) names.add(g);
    return k.key;
  });
  const out = { keys: keys.join('\n'), groups: [...names].sort() };
  if (contiguous) {
    let m = runKeys.get(rules[part[0]]);
    if (!m) runKeys.set(rules[part[0]], (m = new Map()));
    m.set(part.length, out);
  }
  return out;
}

/** One section's compiled rules at a point: a trie per family and its non-IP EtherType pairs. */
export interface Segment {
  v4: FamilyTable;
  v6: FamilyTable;
  r4: FamilyTable;
  r6: FamilyTable;
  ether: number[];
}

/**
 * Segments by content: the rules' keys (one cached string per run of rules,
 * whose hash V8 keeps, so a lookup does not rehash the long text), then the
 * addresses of the groups those rules name.
 */
export class SegmentCache {
  private readonly byKeys = new Map<string, Map<string, Segment>>();
  get(keys: string, groups: string): Segment | undefined {
    return this.byKeys.get(keys)?.get(groups);
  }
  set(keys: string, groups: string, seg: Segment): void {
    let m = this.byKeys.get(keys);
    if (!m) this.byKeys.set(keys, (m = new Map()));
    m.set(groups, seg);
  }
}

export interface CompileOptions {
  /** Build points only for these workloads' vNICs (this host's); groups still hold every workload. Null: all. */
  workloads?: Set<string> | null;
}

export function policyCompile(policy: Policy, previous: CompiledPolicy | null = null, opts: CompileOptions = {}): CompiledPolicy {
  const only = opts.workloads ?? null;
  const started = performance.now();
  const rules = policy.sections.flatMap((s) => s.rules);
  const groups = resolveGroups(policy);
  const texts = new Map<string, string>();
  const groupText = (name: string): string => {
    let t = texts.get(name);
    if (t === undefined) {
      const a = groups.get(name)?.addresses;
      t = !a ? '' : a.any ? '*' : a.prefixes.map((p) => p.text).join(',');
      texts.set(name, t);
    }
    return t;
  };
  const segments = new SegmentCache();
  // Rules without appliedTo apply at every vNIC: vNICs differ only by the scoped rules that reach them.
  const scoped = rules.filter((r) => !r.disabled && r.appliedTo.length > 0);
  const byScope = new Map<string, PointTables>();
  const points: CompiledPolicy['points'] = new Map();
  let atomsTotal = 0, bytes = 0, reused = 0, tries = 0;
  for (const w of policy.workloads.values()) {
    if (only !== null && !only.has(w.name)) continue; // another host's vNIC
    const scope = scoped.filter((r) => ruleAppliesAt(r, w.name, groups)).map((r) => r.order);
    const scopeKey = scope.join(',');
    let tables = byScope.get(scopeKey);
    if (!tables) {
      const inScope = new Set(scope);
      const applicable = rules.filter((r) => !r.disabled && (r.appliedTo.length === 0 || inScope.has(r.order))).map((r) => r.order);
      tables = { v4: [], v6: [], r4: [], r6: [], ether: new Int32Array(0), rules: applicable };
      const ether: number[] = [];
      // Rule orders are contiguous per section: cut the applicable list where the section changes.
      for (let from = 0; from < applicable.length;) {
        let to = from + 1;
        while (to < applicable.length && rules[applicable[to]].section === rules[applicable[from]].section) to++;
        const part = applicable.slice(from, to);
        const run = runKey(rules, part, policy);
        const groupsText = run.groups.map((n) => `${n}=${groupText(n)}`).join(';');
        let seg = segments.get(run.keys, groupsText);
        if (!seg) {
          seg = previous?.segmentsBySignature.get(run.keys, groupsText);
          if (seg) reused++;
          else {
            const atoms = part.flatMap((o) => expandRule(rules[o], policy, groups));
            const segEther: number[] = [];
            for (const a of atoms) if (a.service.kind === 'ether') segEther.push(a.service.ethertype, a.rule);
            const resolution = part.flatMap((o) => expandRuleResolution(rules[o], policy, groups));
            seg = {
              v4: buildFamilyTable(atoms, 4), v6: buildFamilyTable(atoms, 6),
              r4: buildFamilyTable(resolution, 4), r6: buildFamilyTable(resolution, 6), ether: segEther,
            };
          }
          segments.set(run.keys, groupsText, seg);
        }
        ether.push(...seg.ether);
        // An empty trie matches nothing: leave it out of the lookup chain.
        if (seg.v4.atoms.length > 0) tables.v4.push(seg.v4);
        if (seg.v6.atoms.length > 0) tables.v6.push(seg.v6);
        if (seg.r4.atoms.length > 0) tables.r4.push(seg.r4);
        if (seg.r6.atoms.length > 0) tables.r6.push(seg.r6);
        from = to;
      }
      tables.ether = Int32Array.from(ether);
      byScope.set(scopeKey, tables);
      for (const t of [...tables.v4, ...tables.v6, ...tables.r4, ...tables.r6]) { atomsTotal += t.atoms.length; bytes += t.trie.stats.bytes; tries++; }
      atomsTotal += tables.ether.length / 2;
      bytes += tables.ether.byteLength;
    }
    // Ingress and egress read the same rule list: from/to pick the direction.
    points.set(w.nic, {
      egress: { workload: w.name, nic: w.nic, direction: 'egress', tables },
      ingress: { workload: w.name, nic: w.nic, direction: 'ingress', tables },
    });
  }
  const ruleAction = Uint8Array.from(rules.map((r) => VERDICT_OF_ACTION[r.action]));
  const ruleFlags = Uint8Array.from(rules.map((r) => (r.stateless ? RULE_FLAG.stateless : 0) | (r.log ? RULE_FLAG.log : 0)));
  return {
    policy,
    rules,
    ruleAction,
    ruleFlags,
    defaultAction: policy.default,
    groups,
    points,
    stats: { rules: rules.length, atoms: atomsTotal, tries, bytes, buildMs: performance.now() - started, reused },
    segmentsBySignature: segments,
  };
}

/** First matching rule order for an IP key at a point, or -1 (then the default applies). */
export function pointClassify(tables: PointTables, family: Family, key: Int32Array, keyOff: number): number {
  return firstMatch(family === 4 ? tables.v4 : tables.v6, key, keyOff);
}

/** The first section table (in precedence order) with a match decides. */
function firstMatch(list: FamilyTable[], key: Int32Array, keyOff: number): number {
  for (let i = 0; i < list.length; i++) {
    const t = list[i];
    const atom = trieLookup(t.trie, key, keyOff);
    if (atom >= 0) return t.atomRule[atom];
  }
  return -1;
}

/** First rule order that decides address resolution for a key (proto and ports ignored) at a point, or -1. */
export function pointClassifyResolution(tables: PointTables, family: Family, key: Int32Array, keyOff: number): number {
  return firstMatch(family === 4 ? tables.r4 : tables.r6, key, keyOff);
}

/** First matching rule order for a non-IP EtherType at a point, or -1. */
export function pointClassifyEther(tables: PointTables, ethertype: number): number {
  const e = tables.ether;
  for (let i = 0; i < e.length; i += 2) if (e[i] === ethertype) return e[i + 1];
  return -1;
}
