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
import { BIAS, trieBuild, trieLookup, type RuleTrie } from '../classify/ruleTrie.js';
import { KEY_V4, KEY_V6 } from '../packet/key.js';
import { prefixAggregate, type Family, type Prefix } from './addresses.js';
import { groupSelects, MapView, sameGroup, WorkloadIndex, type Action, type AddressRef, type Group, type Policy, type Rule, type ServiceRef, type Workload } from './model.js';
import { classesBuild, classOf4, classOf6, rangesMerge, type AddressClasses } from './addressClasses.js';
import { ANY_SERVICE, type IpServiceAtom, type ServiceAtom } from './services.js';
import { sameAddresses, workloadPrefixes } from './addresses.js';
import { Words } from '../util/words.js';
import { VERDICT_OF_ACTION } from '../packet/verdict.js';

export type Direction = 'egress' | 'ingress';

/** An address side after resolution: every address, or a list of prefixes (maybe empty). */
export type AddressSet = { any: true } | { any: false; prefixes: Prefix[] };

/** One trie entry, described for dumps: a rule's source and destination class ranges and one service. */
export interface Atom {
  rule: number;
  /** The side as the rule names it: `any`, `@group`, a CIDR, joined by commas. */
  src: string;
  dst: string;
  service: ServiceAtom;
  srcClasses: [number, number];
  dstClasses: [number, number];
}

/**
 * The compiled form of one section's rules for one IP family at a point:
 * addresses to classes, then a trie over (source class, destination class,
 * protocol, sport, dport).
 */
export interface FamilyTable {
  trie: RuleTrie;
  classes: AddressClasses;
  /** Atom index (= trie rule index) -> rule order. */
  atomRule: Int32Array;
  /** How many entries (atoms) the trie holds. */
  entries: number;
  /** What each entry stands for (dumps); null in a table handed over by the compiling thread, which keeps them. */
  atoms: Atom[] | null;
}

/** The trie key after address classification: [source class, destination class, protocol, sport, dport]. */
export const CLASS_KEY_DIMS = 5;

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
  /** Rule orders that apply here, in precedence order (a typed array: handed between threads as one copy). */
  rules: Int32Array;
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
  groups: ReadonlyMap<string, ResolvedGroup>;
  points: Map<string, { egress: CompiledPoint; ingress: CompiledPoint }>;
  stats: { rules: number; atoms: number; tries: number; bytes: number; buildMs: number; reused: number };
  /** Section tables by content signature, for the next incremental compile. */
  segmentsBySignature: SegmentCache;
  /**
   * Where each rule stood in the document before (a reload worked out off
   * the forwarding thread): rule i was rule from[i] of the document whose
   * sections are `sections`, or -1 if it is new. Absent: find it by id.
   */
  ruleFrom?: { sections: Policy['sections']; from: Int32Array } | null;
}

export const RULE_FLAG = { stateless: 1, log: 2 } as const;

/**
 * A group after pass 1: its members (nested groups flattened) and every
 * address it holds. `prefixes` is the raw union (prefixes may overlap: the
 * address classes do not mind); `addresses`, aggregated, is computed when a
 * dump or an explanation asks for it. `signature` says exactly what the
 * addresses are made of, in a few bytes per member: the group definitions
 * (by identity: the document's objects do not change while it is in force)
 * and each member's addresses, so that an unchanged group of a million
 * CIDRs is recognised without reading them. `version` is a number that
 * changes when the signature does: what the section cache keys on.
 */
export class ResolvedGroup {
  private aggregated: AddressSet | null = null;
  private held: Prefix[] | (() => Prefix[]);
  constructor(
    readonly definition: Group,
    /** Members it selects by itself (nested groups aside). */
    readonly direct: Set<string>,
    readonly members: Set<string>,
    /** The addresses, or how to find them when first asked (a group handed over from the compiling thread). */
    prefixes: Prefix[] | (() => Prefix[]),
    readonly signature: string,
    readonly version: number,
  ) {
    this.held = prefixes;
  }
  get prefixes(): Prefix[] {
    if (typeof this.held === 'function') this.held = this.held();
    return this.held;
  }
  get addresses(): AddressSet {
    return (this.aggregated ??= { any: false, prefixes: prefixAggregate(this.prefixes) });
  }
}

/** Resolved groups seen through the few that tag changes resolved again (see MapView). */
export class GroupsView extends MapView<ResolvedGroup> {}

/**
 * `previous` with `replaced` in place: a view over the same base map with
 * the replaced entries added to its own, or a new plain map once those are
 * a good part of it (reads stay one lookup more, copies stay small).
 */
export function groupsPatched(previous: ReadonlyMap<string, ResolvedGroup>, replaced: Iterable<[string, ResolvedGroup]>): ReadonlyMap<string, ResolvedGroup> {
  const base = previous instanceof GroupsView ? previous.base : previous;
  const changed = new Map(previous instanceof GroupsView ? previous.changed : []);
  for (const [name, g] of replaced) changed.set(name, g);
  if (changed.size <= Math.max(64, base.size >> 3)) return new GroupsView(base, changed);
  const out = new Map<string, ResolvedGroup>();
  for (const [name, g] of base) out.set(name, changed.get(name) ?? g);
  return out;
}

/**
 * The names whose groups may differ between two resolutions that share a
 * base map (each the base or a view over it), or null when they do not
 * (then any may).
 */
export function groupsDiffering(a: ReadonlyMap<string, ResolvedGroup>, b: ReadonlyMap<string, ResolvedGroup>): Set<string> | null {
  const baseA = a instanceof GroupsView ? a.base : a, baseB = b instanceof GroupsView ? b.base : b;
  if (baseA !== baseB) return null;
  const out = new Set<string>();
  for (const m of [a, b]) if (m instanceof GroupsView) for (const name of m.changed.keys()) if (a.get(name) !== b.get(name)) out.add(name);
  return out;
}

const definitionIds = new WeakMap<Group, number>();
let nextDefinitionId = 1;
/**
 * A number per group definition. A new document's group that says what the
 * previous result's group of that name said (`before`) gets the same one:
 * its version, and the section tables built on it, carry over a reload
 * (100,000 unchanged rules rebuilt every trie, 5-7 s, when a comment
 * changed).
 */
function definitionId(g: Group, before?: Group): number {
  let id = definitionIds.get(g);
  if (id !== undefined) return id;
  id = before !== undefined && before !== g && sameGroup(before, g) ? definitionId(before) : nextDefinitionId++;
  definitionIds.set(g, id);
  return id;
}
let nextGroupVersion = 1;


/**
 * Which groups could select a workload, by what they select on, and which
 * groups nest each group: kept per document (its groups map), so that a tag
 * change looks at the few groups it can touch instead of testing every group
 * (2,000 groups: most of a tag change's compile).
 */
interface GroupIndex {
  /** Tag -> groups naming it in tagsAnyOf or tagsAllOf. */
  byTag: Map<string, string[]>;
  /** Workload name -> groups listing it. */
  byWorkload: Map<string, string[]>;
  /** Group -> the groups that list it among their nested groups. */
  parents: Map<string, string[]>;
}
const groupIndexes = new WeakMap<Policy['groups'], GroupIndex>();

function groupIndex(groups: Policy['groups'], workloads: Policy['workloads']): GroupIndex {
  let idx = groupIndexes.get(groups);
  if (!idx) {
    idx = { byTag: new Map(), byWorkload: new Map(), parents: new Map() };
    // A group of tagsAllOf selects only workloads with every one of its tags: indexed under the
    // rarest (app-7 and web, not web), one workload's tag change reaches its few groups, not all
    // the groups of every application that have web in common.
    const holders = new Map<string, number>();
    for (const w of workloads.values()) for (const t of w.tags) holders.set(t, (holders.get(t) ?? 0) + 1);
    const add = (m: Map<string, string[]>, k: string, g: string) => { const l = m.get(k); if (l === undefined) m.set(k, [g]); else if (l[l.length - 1] !== g) l.push(g); };
    for (const g of groups.values()) {
      for (const t of g.tagsAnyOf) add(idx.byTag, t, g.name);
      if (g.tagsAllOf.length > 0) {
        let rarest = g.tagsAllOf[0];
        for (const t of g.tagsAllOf) if ((holders.get(t) ?? 0) < (holders.get(rarest) ?? 0)) rarest = t;
        add(idx.byTag, rarest, g.name);
      }
      for (const w of g.workloads) add(idx.byWorkload, w, g.name);
      for (const sub of g.groups) add(idx.parents, sub, g.name);
    }
    groupIndexes.set(groups, idx);
  }
  return idx;
}

/**
 * The groups whose resolution can differ when only `changed` workloads
 * differ: those that may select one of them before or after (by name or by
 * one of its tags; a group that selects by tags always names one the
 * workload has), and every group nesting one of those. Any other group
 * selects none of them either way and nests nothing that changed. (A
 * group of tagsAllOf is indexed under one of its tags, which every workload
 * it selects has.)
 */
function groupsReachedBy(idx: GroupIndex, changed: ReadonlyArray<{ name: string; before: Workload | undefined; after: Workload | undefined }>): Set<string> {
  const out = new Set<string>();
  const visit = (g: string) => {
    if (out.has(g)) return;
    out.add(g);
    for (const p of idx.parents.get(g) ?? []) visit(p);
  };
  for (const c of changed) {
    for (const g of idx.byWorkload.get(c.name) ?? []) visit(g);
    for (const w of [c.before, c.after]) if (w !== undefined) for (const t of w.tags) for (const g of idx.byTag.get(t) ?? []) visit(g);
  }
  return out;
}

/**
 * Pass 1: group membership and addresses, with nested groups flattened.
 *
 * Incremental: given the previous compile's groups and workloads, a group
 * whose definition (and nested groups) is the same object and that selects
 * none of the workloads that changed, before or after, is the previous
 * result itself; a group that does select one starts from its previous
 * direct members. A tag change on one workload therefore re-resolves only
 * the groups that workload enters or leaves.
 */
export function resolveGroups(policy: Policy, previous: CompiledPolicy | null = null, changedHint: ReadonlySet<string> | null = null): CompiledPolicy['groups'] {
  const out = new Map<string, ResolvedGroup>();
  const resolving = new Set<string>();
  // Workloads that are not the same object as in the previous compile (tags changed, added, removed).
  let changed: Array<{ name: string; before: Workload | undefined; after: Workload | undefined }> | null = null;
  if (previous) {
    changed = [];
    const before = previous.policy.workloads;
    if (changedHint !== null) {
      // The caller knows which workloads can differ (a tag change): no scan of every workload.
      for (const name of changedHint) if (before.get(name) !== policy.workloads.get(name)) changed.push({ name, before: before.get(name), after: policy.workloads.get(name) });
    } else {
      for (const [name, w] of policy.workloads) if (before.get(name) !== w) changed.push({ name, before: before.get(name), after: w });
      for (const [name, w] of before) if (!policy.workloads.has(name)) changed.push({ name, before: w, after: undefined });
    }
    // Many changes (a new document): resolving afresh is simpler than patching.
    if (changed.length > 64) changed = null;
  }
  // The same group definitions (a tag change): only the groups the changed workloads can reach are
  // resolved again (into `out`), and the result is the previous one with those in place.
  const reachable = changed !== null && previous !== null && previous.policy.groups === policy.groups ? groupsReachedBy(groupIndex(policy.groups, policy.workloads), changed) : null;
  let index: WorkloadIndex | null = null;
  const resolve = (name: string): ResolvedGroup => {
    const done = out.get(name);
    if (done) return done;
    if (reachable !== null && !reachable.has(name)) return previous!.groups.get(name)!;
    const g = policy.groups.get(name) as Group;
    resolving.add(name);
    const subs: ResolvedGroup[] = [];
    for (const sub of g.groups) if (!resolving.has(sub)) subs.push(resolve(sub)); // validation rejects cycles; stay finite anyway
    const prev = previous?.groups.get(name);
    let direct: Set<string>;
    if (prev && changed && prev.definition === g) {
      // Touched: the workload enters or leaves, or stays in with other addresses.
      const touched = changed.filter((c) => {
        const was = c.before !== undefined && groupSelects(g, c.before), is = c.after !== undefined && groupSelects(g, c.after);
        return was !== is || (is && !sameAddresses(c.before as Workload, c.after as Workload));
      });
      const subsSame = subs.every((r, i) => r === previous!.groups.get(g.groups[i]));
      if (touched.length === 0 && subsSame) {
        resolving.delete(name);
        out.set(name, prev);
        return prev;
      }
      direct = new Set(prev.direct);
      for (const c of touched) {
        if (c.after !== undefined && groupSelects(g, c.after)) direct.add(c.name); else direct.delete(c.name);
      }
    } else {
      index ??= new WorkloadIndex(policy.workloads);
      direct = new Set(index.selected(g).map((w) => w.name));
    }
    const members = new Set(direct);
    const prefixes: Prefix[] = g.cidrs.slice();
    const definition: string[] = [String(definitionId(g, prev?.definition))];
    for (const r of subs) {
      for (const m of r.members) members.add(m);
      for (const p of r.prefixes) prefixes.push(p);
      definition.push(String(r.version));
    }
    // A workload's addresses everywhere: its ips and the link-local address its MAC gives it.
    const held: string[] = [];
    for (const m of members) {
      const w = policy.workloads.get(m) as Workload;
      for (const p of workloadPrefixes(w)) prefixes.push(p);
      held.push(`${w.mac}=${w.ips.map((p) => p.text).join('+')}`);
    }
    const signature = `(${definition.join(',')}|${held.join(',')})`;
    const result = new ResolvedGroup(g, direct, members, prefixes, signature, prev && prev.signature === signature ? prev.version : nextGroupVersion++);
    resolving.delete(name);
    out.set(name, result);
    return result;
  };
  for (const name of reachable ?? policy.groups.keys()) resolve(name);
  return reachable !== null ? groupsPatched(previous!.groups, out) : out;
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

/**
 * The services a rule takes part in address resolution with: one per
 * family, every protocol and port (the address pairs are what resolution is
 * about), when it allows or rejects something, names every service, or
 * names arp / nd.
 */
function resolutionServices(rule: Rule, policy: Policy): IpServiceAtom[] {
  const families = new Set<4 | 6>();
  for (const s of ruleServices(rule, policy)) {
    if (s.kind === 'resolve') families.add(s.family);
    else if (s.kind === 'ip' && (rule.action !== 'drop' || s.proto < 0)) {
      if (s.family === 0) { families.add(4); families.add(6); } else families.add(s.family);
    }
  }
  return [...families].map((family): IpServiceAtom => ({ kind: 'ip', family, proto: -1, sport: [0, 65535], dport: [0, 65535] }));
}

/** A rule side over one section's address classes: null for any, else per family its class ranges. */
interface SideClasses { label: string; v4: Int32Array; v6: Int32Array }

function refLabel(r: AddressRef): string {
  return r.kind === 'any' ? 'any' : r.kind === 'group' ? `@${r.name}` : r.prefix.text;
}

const ANY_RANGE = new Uint32Array([0, 0xffffffff]);

/** Entries of one family: boxes over (source class, destination class, protocol, sport, dport). */
class FamilyEntries {
  /** Each entry's box, CLASS_KEY_DIMS words a bound (unsigned, kept as their Int32 bits: trieBuild reads them `>>> 0`). */
  private readonly lo = new Words(CLASS_KEY_DIMS * 64);
  private readonly hi = new Words(CLASS_KEY_DIMS * 64);
  readonly atoms: Atom[] = [];
  constructor(readonly family: Family) {}

  private box(a0: number, a1: number, a2: number, a3: number, a4: number, b0: number, b1: number, b2: number, b3: number, b4: number): void {
    const at = this.lo.reserve(CLASS_KEY_DIMS);
    this.hi.reserve(CLASS_KEY_DIMS);
    const lo = this.lo.a, hi = this.hi.a;
    lo[at] = a0; lo[at + 1] = a1; lo[at + 2] = a2; lo[at + 3] = a3; lo[at + 4] = a4;
    hi[at] = b0; hi[at + 1] = b1; hi[at + 2] = b2; hi[at + 3] = b3; hi[at + 4] = b4;
  }

  /** The rule's boxes for these services: source ranges x destination ranges, per service that fits the family. */
  add(order: number, src: SideClasses | null, dst: SideClasses | null, services: ServiceAtom[]): void {
    const f = this.family;
    const srcR = src === null ? ANY_RANGE : f === 4 ? src.v4 : src.v6;
    const dstR = dst === null ? ANY_RANGE : f === 4 ? dst.v4 : dst.v6;
    if (srcR.length === 0 || dstR.length === 0) return; // a side with no address of this family
    for (const service of services) {
      if (service.kind !== 'ip' || (service.family !== 0 && service.family !== f)) continue;
      for (let i = 0; i < srcR.length; i += 2) {
        for (let j = 0; j < dstR.length; j += 2) {
          this.box(
            srcR[i], dstR[j], service.proto < 0 ? 0 : service.proto, service.sport[0], service.dport[0],
            srcR[i + 1], dstR[j + 1], service.proto < 0 ? 255 : service.proto, service.sport[1], service.dport[1],
          );
          this.atoms.push({
            rule: order, src: src?.label ?? 'any', dst: dst?.label ?? 'any', service,
            srcClasses: [srcR[i] >>> 0, srcR[i + 1] >>> 0], dstClasses: [dstR[j] >>> 0, dstR[j + 1] >>> 0],
          });
        }
      }
    }
  }

  build(classes: AddressClasses): FamilyTable {
    const trie = trieBuild(CLASS_KEY_DIMS, this.atoms.length, this.lo.view(), this.hi.view());
    return { trie, classes, atomRule: Int32Array.from(this.atoms, (a) => a.rule), entries: this.atoms.length, atoms: this.atoms };
  }
}

/**
 * Pass 2 and 3 for one section's run of rules at a point: the address
 * classes of every set its rules name, then per family the rule and
 * resolution tries over class ranges, and the non-IP EtherType pairs.
 */
function segmentBuild(part: number[], rules: Rule[], policy: Policy, groups: CompiledPolicy['groups']): Segment {
  const setIndex = new Map<string, number>();
  const sets: Prefix[][] = [];
  const indexSet = (r: AddressRef) => {
    if (r.kind === 'any') return;
    const key = refLabel(r);
    if (setIndex.has(key)) return;
    setIndex.set(key, sets.length);
    if (r.kind === 'cidr') sets.push([r.prefix]);
    else sets.push(groups.get(r.name)?.prefixes ?? []);
  };
  for (const o of part) {
    for (const r of rules[o].from) indexSet(r);
    for (const r of rules[o].to) indexSet(r);
  }
  const c4 = classesBuild(4, sets), c6 = classesBuild(6, sets);
  // Per side and per service list as written: rules written alike share these lists (the loader's
  // sameAsWritten), and a rule's classes and atoms depend on nothing else here (and on its action).
  const sides = new Map<readonly AddressRef[], SideClasses | null>();
  const side = (refs: readonly AddressRef[]): SideClasses | null => {
    let made = sides.get(refs);
    if (made === undefined) sides.set(refs, (made = sideOf(refs)));
    return made;
  };
  const sideOf = (refs: readonly AddressRef[]): SideClasses | null => {
    if (refs.some((r) => r.kind === 'any')) return null;
    const idx = refs.map((r) => setIndex.get(refLabel(r)) as number);
    return { label: refs.map(refLabel).join(','), v4: idx.length === 1 ? c4.ranges[idx[0]] : rangesMerge(idx.map((i) => c4.ranges[i])), v6: idx.length === 1 ? c6.ranges[idx[0]] : rangesMerge(idx.map((i) => c6.ranges[i])) };
  };
  const v4 = new FamilyEntries(4), v6 = new FamilyEntries(6), r4 = new FamilyEntries(4), r6 = new FamilyEntries(6);
  const ether: number[] = [];
  // A service list's atoms but resolution ones, and its resolution services for an action other than drop and for drop.
  const servicesWritten = new Map<readonly ServiceRef[], { services: ServiceAtom[]; resolution: [IpServiceAtom[] | null, IpServiceAtom[] | null] }>();
  for (const o of part) {
    const rule = rules[o];
    const src = side(rule.from), dst = side(rule.to);
    // Resolution services go only into the resolution tables.
    let written = servicesWritten.get(rule.services);
    if (written === undefined) servicesWritten.set(rule.services, (written = { services: ruleServices(rule, policy).filter((s) => s.kind !== 'resolve'), resolution: [null, null] }));
    const services = written.services;
    for (const s of services) if (s.kind === 'ether') ether.push(s.ethertype, o);
    v4.add(o, src, dst, services);
    v6.add(o, src, dst, services);
    const dropping = rule.action === 'drop' ? 1 : 0;
    const resolution = written.resolution[dropping] ??= resolutionServices(rule, policy);
    r4.add(o, src, dst, resolution);
    r6.add(o, src, dst, resolution);
  }
  return { v4: v4.build(c4.classes), v6: v6.build(c6.classes), r4: r4.build(c4.classes), r6: r6.build(c6.classes), ether };
}

/**
 * What a rule's atoms depend on, apart from group contents and its order, as
 * text: action, the from/to references (group names, CIDRs) and the
 * services. Cached per Rule object, so a tag change (same document, new
 * group contents) costs no per-rule work. A rule object can stand in more
 * than one document (one that only moved is shared, see RulePlaces), so the
 * order is not in the cached key, and a key made with other service
 * definitions is made again.
 */
const ruleKeys = new WeakMap<Rule, { key: string; groups: string[]; services: Policy['services'] }>();
function ruleKey(rule: Rule, policy: Policy): { key: string; groups: string[] } {
  let k = ruleKeys.get(rule);
  if (k && k.services === policy.services) return k;
  const groups: string[] = [];
  const side = (refs: Rule['from']) => refs.map((r) => {
    if (r.kind === 'any') return '*';
    if (r.kind === 'cidr') return r.prefix.text;
    groups.push(r.name);
    return `@${r.name}`;
  }).join(',');
  const services = rule.services.map((s) => (s.kind === 'any' ? '*' : s.kind === 'inline' ? s.text : `${s.name}=${policy.services.get(s.name)?.specs.join('+') ?? ''}`)).join(',');
  // The action too: the resolution tables hold a drop rule only where it names no protocol.
  k = { key: `${rule.action}|${side(rule.from)}|${side(rule.to)}|${services}`, groups, services: policy.services };
  ruleKeys.set(rule, k);
  return k;
}

/**
 * A run of rules' keys (each with its order) joined, and the groups they
 * name; cached for contiguous runs per document's rule list (ruleTables'),
 * by first order and length, for the same service definitions. Not per
 * first Rule: a rule object can stand in two documents followed by
 * different rules.
 */
const runKeys = new WeakMap<Rule[], Map<string, { keys: string; groups: string[]; services: Policy['services'] }>>();
function runKey(rules: Rule[], part: number[], policy: Policy): { keys: string; groups: string[] } {
  const contiguous = part[part.length - 1] - part[0] + 1 === part.length;
  const at = `${part[0]}:${part.length}`;
  const cache = contiguous ? runKeys.get(rules) : undefined;
  const hit = cache?.get(at);
  if (hit && hit.services === policy.services) return hit;
  const names = new Set<string>();
  const keys = part.map((o) => {
    const k = ruleKey(rules[o], policy);
    for (const g of k.groups) names.add(g);
    return `${o}|${k.key}`;
  });
  const out = { keys: keys.join('\n'), groups: [...names].sort(), services: policy.services };
  if (contiguous) {
    let m = runKeys.get(rules);
    if (!m) runKeys.set(rules, (m = new Map()));
    m.set(at, out);
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
  /**
   * The only workloads whose objects may differ from `previous`'s (a tag
   * change), so that nothing scans all of them; null or unset: any may.
   * Only valid when `policy` was made from previous.policy by replacing
   * those workloads.
   */
  changed?: ReadonlySet<string> | null;
}

/** What a document's rules compile to whatever the workloads: kept per document (its sections array). */
interface RuleTables {
  rules: Rule[];
  /** appliedTo group -> the orders of the rules naming it, ascending. */
  scopedByGroup: Map<string, number[]>;
  ruleAction: Uint8Array;
  ruleFlags: Uint8Array;
}
const ruleTablesOf = new WeakMap<Policy['sections'], RuleTables>();
function ruleTables(policy: Policy): RuleTables {
  let t = ruleTablesOf.get(policy.sections);
  if (!t) {
    const rules = policy.sections.flatMap((s) => s.rules);
    // Rules without appliedTo apply at every vNIC: vNICs differ only by the scoped rules that reach them.
    const scopedByGroup = new Map<string, number[]>();
    rules.forEach((r, i) => {
      if (r.disabled) return;
      for (const g of r.appliedTo) {
        const l = scopedByGroup.get(g);
        if (l === undefined) scopedByGroup.set(g, [i]); else if (l[l.length - 1] !== i) l.push(i);
      }
    });
    t = {
      rules,
      scopedByGroup,
      ruleAction: Uint8Array.from(rules.map((r) => VERDICT_OF_ACTION[r.action])),
      ruleFlags: Uint8Array.from(rules.map((r) => (r.stateless ? RULE_FLAG.stateless : 0) | (r.log ? RULE_FLAG.log : 0))),
    };
    ruleTablesOf.set(policy.sections, t);
  }
  return t;
}

/** A run's groups as `name=version;...`, with the resolution it was made for and its names as a set. */
const runTexts = new WeakMap<object, { groups: ReadonlyMap<string, ResolvedGroup>; text: string; names: Set<string> }>();

/**
 * The versions of the groups a run names, as text (half of a section
 * table's cache key): made again only when one of its groups differs from
 * the resolution it was last made for. A section naming 2,000 groups cost a
 * tag change 0.4 ms of joining otherwise.
 */
function runGroupsText(run: { groups: string[] }, groups: ReadonlyMap<string, ResolvedGroup>, previous: ReadonlyMap<string, ResolvedGroup> | null, differing: Set<string> | null): string {
  const memo = runTexts.get(run);
  if (memo !== undefined) {
    if (memo.groups === groups) return memo.text;
    if (memo.groups === previous && differing !== null) {
      let same = true;
      for (const name of differing) if (memo.names.has(name)) { same = false; break; }
      if (same) {
        memo.groups = groups;
        return memo.text;
      }
    }
  }
  const text = run.groups.map((n) => `${n}=${groups.get(n)?.version ?? ''}`).join(';');
  runTexts.set(run, { groups, text, names: memo?.names ?? new Set(run.groups) });
  return text;
}

/** A scope's rules, whatever the workloads: the applicable rule orders, cut by section into runs. */
interface ScopePlan { applicable: number[]; orders: Int32Array; runs: Array<{ part: number[]; run: { keys: string; groups: string[] } }> }
const scopePlans = new WeakMap<Policy['sections'], Map<string, ScopePlan>>();

/**
 * The rules that apply in a scope (every unscoped rule and the scoped ones
 * that reach it), cut where the section changes, kept per document: at
 * 100,000 rules, working this out again at every tag change was most of the
 * change's compile.
 */
function scopePlan(policy: Policy, rules: Rule[], scope: number[], scopeKey: string): ScopePlan {
  let plans = scopePlans.get(policy.sections);
  if (!plans) scopePlans.set(policy.sections, (plans = new Map()));
  let plan = plans.get(scopeKey);
  if (!plan) {
    const inScope = new Set(scope);
    const applicable: number[] = [];
    rules.forEach((r, order) => { if (!r.disabled && (r.appliedTo.length === 0 || inScope.has(order))) applicable.push(order); });
    const runs: ScopePlan['runs'] = [];
    // Rule orders are contiguous per section: cut the applicable list where the section changes.
    for (let from = 0; from < applicable.length;) {
      let to = from + 1;
      while (to < applicable.length && rules[applicable[to]].section === rules[applicable[from]].section) to++;
      const part = applicable.slice(from, to);
      runs.push({ part, run: runKey(rules, part, policy) });
      from = to;
    }
    plan = { applicable, orders: Int32Array.from(applicable), runs };
    plans.set(scopeKey, plan);
  }
  return plan;
}

/**
 * The orders of the scoped rules that apply at a workload's vNIC, ascending
 * (what testing ruleAppliesAt on each scoped rule gives): the rules of the
 * appliedTo groups it is a member of, found by group, not by rule.
 */
function scopeOf(workload: string, scopedByGroup: Map<string, number[]>, groups: CompiledPolicy['groups']): number[] {
  let picked: number[] | null = null;
  for (const [g, list] of scopedByGroup) {
    if (!(groups.get(g)?.members.has(workload) ?? false)) continue;
    if (picked === null) picked = list.slice(); else for (const i of list) picked.push(i);
  }
  if (picked === null) return [];
  picked.sort((a, b) => a - b);
  const out: number[] = [];
  for (let k = 0; k < picked.length; k++) if (k === 0 || picked[k] !== picked[k - 1]) out.push(picked[k]);
  return out;
}

export function policyCompile(policy: Policy, previous: CompiledPolicy | null = null, opts: CompileOptions = {}): CompiledPolicy {
  const only = opts.workloads ?? null;
  const started = performance.now();
  const { rules, scopedByGroup, ruleAction, ruleFlags } = ruleTables(policy);
  const groups = resolveGroups(policy, previous, opts.changed ?? null);
  const differing = previous === null ? null : groupsDiffering(previous.groups, groups);
  const segments = new SegmentCache();
  const byScope = new Map<string, PointTables>();
  const points: CompiledPolicy['points'] = new Map();
  let atomsTotal = 0, bytes = 0, reused = 0, tries = 0;
  // This host's workloads only (the others' vNICs are another host's), in the document's order.
  const local: Iterable<Workload> = only === null ? policy.workloads.values() : [...only].flatMap((n) => policy.workloads.get(n) ?? []);
  for (const w of local) {
    const scope = scopeOf(w.name, scopedByGroup, groups);
    const scopeKey = scope.join(',');
    let tables = byScope.get(scopeKey);
    if (!tables) {
      const plan = scopePlan(policy, rules, scope, scopeKey);
      tables = { v4: [], v6: [], r4: [], r6: [], ether: new Int32Array(0), rules: plan.orders };
      const ether: number[] = [];
      for (const { part, run } of plan.runs) {
        const groupsText = runGroupsText(run, groups, previous?.groups ?? null, differing);
        let seg = segments.get(run.keys, groupsText);
        if (!seg) {
          seg = previous?.segmentsBySignature.get(run.keys, groupsText);
          if (seg) reused++;
          else seg = segmentBuild(part, rules, policy, groups);
          segments.set(run.keys, groupsText, seg);
        }
        ether.push(...seg.ether);
        // An empty trie matches nothing: leave it out of the lookup chain.
        if (seg.v4.entries > 0) tables.v4.push(seg.v4);
        if (seg.v6.entries > 0) tables.v6.push(seg.v6);
        if (seg.r4.entries > 0) tables.r4.push(seg.r4);
        if (seg.r6.entries > 0) tables.r6.push(seg.r6);
      }
      tables.ether = Int32Array.from(ether);
      byScope.set(scopeKey, tables);
      for (const t of [...tables.v4, ...tables.v6, ...tables.r4, ...tables.r6]) { atomsTotal += t.entries; bytes += t.trie.stats.bytes + t.classes.bounds.byteLength + t.classes.cls.byteLength; tries++; }
      atomsTotal += tables.ether.length / 2;
      bytes += tables.ether.byteLength;
    }
    // Ingress and egress read the same rule list: from/to pick the direction.
    points.set(w.nic, {
      egress: { workload: w.name, nic: w.nic, direction: 'egress', tables },
      ingress: { workload: w.name, nic: w.nic, direction: 'ingress', tables },
    });
  }
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

/** First matching rule order for an IP key at a point, or -1 (then the default applies). Hot path. */
export function pointClassify(tables: PointTables, family: Family, key: Int32Array, keyOff: number): number {
  return family === 4 ? firstMatch4(tables.v4, key, keyOff) : firstMatch6(tables.v6, key, keyOff);
}

/** The class key of the lookup in progress (one per thread; lookups do not nest). */
const classKey = new Int32Array(CLASS_KEY_DIMS);

/** The first section table (in precedence order) with a match decides: IPv4 key layout. */
function firstMatch4(list: FamilyTable[], key: Int32Array, keyOff: number): number {
  classKey[2] = key[keyOff + KEY_V4.proto];
  classKey[3] = key[keyOff + KEY_V4.sport];
  classKey[4] = key[keyOff + KEY_V4.dport];
  for (let i = 0; i < list.length; i++) {
    const t = list[i];
    classKey[0] = classOf4(t.classes, key[keyOff + KEY_V4.src]) ^ BIAS;
    classKey[1] = classOf4(t.classes, key[keyOff + KEY_V4.dst]) ^ BIAS;
    const atom = trieLookup(t.trie, classKey, 0);
    if (atom >= 0) return t.atomRule[atom];
  }
  return -1;
}

/** The same over the IPv6 key layout. */
function firstMatch6(list: FamilyTable[], key: Int32Array, keyOff: number): number {
  classKey[2] = key[keyOff + KEY_V6.proto];
  classKey[3] = key[keyOff + KEY_V6.sport];
  classKey[4] = key[keyOff + KEY_V6.dport];
  for (let i = 0; i < list.length; i++) {
    const t = list[i];
    classKey[0] = classOf6(t.classes, key, keyOff + KEY_V6.src) ^ BIAS;
    classKey[1] = classOf6(t.classes, key, keyOff + KEY_V6.dst) ^ BIAS;
    const atom = trieLookup(t.trie, classKey, 0);
    if (atom >= 0) return t.atomRule[atom];
  }
  return -1;
}

/** First rule order that decides address resolution for a key (proto and ports ignored) at a point, or -1. */
export function pointClassifyResolution(tables: PointTables, family: Family, key: Int32Array, keyOff: number): number {
  return family === 4 ? firstMatch4(tables.r4, key, keyOff) : firstMatch6(tables.r6, key, keyOff);
}

/** First matching rule order for a non-IP EtherType at a point, or -1. */
export function pointClassifyEther(tables: PointTables, ethertype: number): number {
  const e = tables.ether;
  for (let i = 0; i < e.length; i += 2) if (e[i] === ethertype) return e[i + 1];
  return -1;
}
