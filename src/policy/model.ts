/**
 * The validated policy model: what a policy document means once it has been
 * checked. Nothing here refers back to YAML; the compiler works from this.
 */
import type { Prefix } from './addresses.js';
import type { ServiceAtom } from './services.js';
import { formatPath, type PathSegment } from './errors.js';

export type Action = 'allow' | 'drop' | 'reject';
export const ACTIONS: readonly Action[] = ['allow', 'drop', 'reject'];

export interface Workload {
  name: string;
  /** Interface name of the vNIC (the TAP or veth tapwall serves). */
  nic: string;
  /** Lower-case, colon-separated. */
  mac: string;
  /** Single addresses, as full-length prefixes. */
  ips: Prefix[];
  tags: string[];
  /** VLAN ids (802.1Q) its frames may carry besides untagged ones; empty: untagged only. */
  vlans: number[];
  /** The hypervisor it runs on (many hosts, one policy); undefined: whichever daemon reads the policy. */
  host?: string;
}

export interface Group {
  name: string;
  /** Members have at least one of these tags. */
  tagsAnyOf: string[];
  /** Members have all of these tags (ignored when empty). */
  tagsAllOf: string[];
  workloads: string[];
  cidrs: Prefix[];
  groups: string[];
}

/** A reference in a rule's from or to. */
export type AddressRef = { kind: 'any' } | { kind: 'group'; name: string } | { kind: 'cidr'; prefix: Prefix };

/** A reference in a rule's services. */
export type ServiceRef = { kind: 'any' } | { kind: 'named'; name: string } | { kind: 'inline'; text: string; atoms: ServiceAtom[] };

/**
 * A rule as written. Where it stands is not part of it (see RulePlaces): its
 * precedence, its `order`, is its index in the document's rules, sections
 * first to last.
 */
export interface Rule {
  id: string;
  section: string;
  /** Read-only, as the other lists: a list written the same way in two rules is one array (load.ts, sameAsWritten). */
  from: readonly AddressRef[];
  to: readonly AddressRef[];
  services: readonly ServiceRef[];
  action: Action;
  /** Group names whose members' vNICs evaluate the rule; empty = every vNIC. */
  appliedTo: readonly string[];
  log: boolean;
  stateless: boolean;
  disabled: boolean;
  comment: string;
}

export interface Section {
  name: string;
  rules: Rule[];
}

/**
 * Where a document's rules stand in its text, by order (the rule's index in
 * the document's rules, sections first to last). Kept apart from the rules:
 * a rule that only moved (a rule inserted or removed above it) is the same
 * object in the next document, so the forwarding thread takes a reload that
 * inserts one rule above 100,000 as one new rule and 100,000 it holds
 * already, where a copy of each at its new place was 19 MB for its collector
 * to promote.
 */
export interface RulePlaces {
  /** 1-based; 1 where the text was not located (a document read the quick way has no problem to place). */
  lines: Int32Array;
  columns: Int32Array;
}

/** Where rule `index` of section `section` stands in a document's data (the loader's messages and rulePlace). */
export function rulePath(section: number, index: number): PathSegment[] {
  return ['sections', section, 'rules', index];
}

/** Where the rule of that order stands in a document: its path (sections[s].rules[r]), line and column. */
export function rulePlace(policy: Policy, order: number): { line: number; column: number; path: string } {
  let first = 0;
  for (let s = 0; s < policy.sections.length; s++) {
    const n = policy.sections[s].rules.length;
    if (order < first + n) return { line: policy.places.lines[order] ?? 1, column: policy.places.columns[order] ?? 1, path: formatPath(rulePath(s, order - first)) };
    first += n;
  }
  throw new RangeError(`no rule of order ${order} in ${policy.source}`);
}

export function noPlaces(): RulePlaces {
  return { lines: new Int32Array(0), columns: new Int32Array(0) };
}

export interface Policy {
  /** Where it was read from, for messages. */
  source: string;
  default: Action;
  spoofguard: boolean;
  /** A Map for a document; a WorkloadsView for a document with dynamic tags applied. */
  workloads: ReadonlyMap<string, Workload>;
  groups: Map<string, Group>;
  services: Map<string, { name: string; atoms: ServiceAtom[]; specs: string[] }>;
  sections: Section[];
  places: RulePlaces;
}

/** What a daemon's data plane runs before its controller installs the first policy: no workloads, everything dropped. */
export function startingPolicy(): Policy {
  return { source: '(starting)', default: 'drop', spoofguard: true, workloads: new Map(), groups: new Map(), services: new Map(), sections: [], places: noPlaces() };
}

/**
 * A map seen through a few replaced entries: `base` with the values of
 * `changed` in their place. The next change makes the next view by copying
 * the replaced entries (usually a handful), not the base's thousands; a read
 * costs one lookup more. `changed` holds only keys the base has, so the view
 * has the base's keys, size and order.
 */
export class MapView<V> implements ReadonlyMap<string, V> {
  constructor(readonly base: ReadonlyMap<string, V>, readonly changed: ReadonlyMap<string, V>) {
    for (const name of changed.keys()) if (!base.has(name)) throw new Error(`${new.target.name}: ${name} is not in the base map`);
  }

  get size(): number { return this.base.size; }
  get(name: string): V | undefined { return this.changed.get(name) ?? this.base.get(name); }
  has(name: string): boolean { return this.base.has(name); }
  keys(): MapIterator<string> { return this.base.keys(); }
  values(): MapIterator<V> {
    if (this.changed.size === 0) return this.base.values();
    return mapIterator(this.base.entries(), ([n, v]) => this.changed.get(n) ?? v);
  }
  entries(): MapIterator<[string, V]> {
    if (this.changed.size === 0) return this.base.entries();
    return mapIterator(this.base.entries(), ([n, v]) => [n, this.changed.get(n) ?? v]);
  }
  [Symbol.iterator](): MapIterator<[string, V]> { return this.entries(); }
  forEach(fn: (value: V, key: string, map: ReadonlyMap<string, V>) => void, thisArg?: unknown): void {
    for (const [n, v] of this.entries()) fn.call(thisArg, v, n, this);
  }
}

/**
 * A workload inventory seen through the workloads whose dynamic tags differ:
 * a tag change makes the next view from the tagged workloads, not the
 * 10,000 workloads of a data-center inventory.
 */
export class WorkloadsView extends MapView<Workload> {}

function* mapIterator<T, U>(from: Iterator<T>, fn: (x: T) => U): MapIterator<U> {
  for (let r = from.next(); !r.done; r = from.next()) yield fn(r.value);
  return undefined;
}

/**
 * Do two group definitions say the same (name, tags, workloads, CIDRs, nested groups, in the same order)?
 * A CIDR's canonical text stands for it. What node:util's isDeepStrictEqual answers for a Group, without
 * walking a million prefix objects and their words (3 s of a groups1m reload).
 */
export function sameGroup(a: Group, b: Group): boolean {
  if (a === b || provenSame.get(a) === b) return true;
  if (a.name !== b.name || !sameStrings(a.tagsAnyOf, b.tagsAnyOf) || !sameStrings(a.tagsAllOf, b.tagsAllOf)) return false;
  if (!sameStrings(a.workloads, b.workloads) || !sameStrings(a.groups, b.groups)) return false;
  const ca = a.cidrs, cb = b.cidrs;
  if (ca.length !== cb.length) return false;
  for (let i = 0; i < ca.length; i++) if (ca[i].text !== cb[i].text) return false;
  // A reload compares a new document's group with the held one's more than once (what to send, what resolves
  // the same): the second time is free.
  if (ca.length > 64) { provenSame.set(a, b); provenSame.set(b, a); }
  return true;
}

/** Large groups found equal to another (definitions are never changed once loaded). */
const provenSame = new WeakMap<Group, Group>();

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Where each rule of `after` stood in `before`, by section and id (a rule's
 * name in the policy): its index there, or -1 for a new rule. How per-rule
 * counters follow their rules across a reload, and how a reload finds the
 * rules that only moved.
 */
export function rulePlaces(before: readonly Rule[], after: readonly Rule[]): Int32Array {
  const at = new Map<string, number>();
  before.forEach((r, i) => at.set(`${r.section}\0${r.id}`, i));
  const from = new Int32Array(after.length);
  for (let i = 0; i < after.length; i++) from[i] = at.get(`${after[i].section}\0${after[i].id}`) ?? -1;
  return from;
}

/** Does a group select this workload by itself (by name or by its tags), nested groups aside? */
export function groupSelects(g: Group, w: Workload): boolean {
  if (g.workloads.includes(w.name)) return true;
  if (g.tagsAnyOf.length > 0 && g.tagsAnyOf.some((t) => w.tags.includes(t))) return true;
  return g.tagsAllOf.length > 0 && g.tagsAllOf.every((t) => w.tags.includes(t));
}

/**
 * Workloads by tag, to find the workloads a group selects without testing
 * every workload against every group (1,500 groups over 10,000 workloads
 * was 15 million tests per compile). `selected` returns what testing each
 * workload with groupSelects returns, in inventory order.
 */
export class WorkloadIndex {
  private readonly byTag = new Map<string, Workload[]>();
  private readonly position = new Map<string, number>();
  constructor(private readonly workloads: ReadonlyMap<string, Workload>) {
    let i = 0;
    for (const w of workloads.values()) {
      this.position.set(w.name, i++);
      for (const t of new Set(w.tags)) {
        const l = this.byTag.get(t);
        if (l) l.push(w); else this.byTag.set(t, [w]);
      }
    }
  }

  selected(g: Group): Workload[] {
    const out = new Set<Workload>();
    for (const name of g.workloads) { const w = this.workloads.get(name); if (w) out.add(w); }
    for (const t of g.tagsAnyOf) for (const w of this.byTag.get(t) ?? []) out.add(w);
    if (g.tagsAllOf.length > 0) {
      // Start from the rarest tag and keep those that have the others.
      let rarest: Workload[] | undefined;
      for (const t of g.tagsAllOf) {
        const l = this.byTag.get(t) ?? [];
        if (!rarest || l.length < rarest.length) rarest = l;
      }
      for (const w of rarest ?? []) if (g.tagsAllOf.every((t) => w.tags.includes(t))) out.add(w);
    }
    return [...out].sort((a, b) => (this.position.get(a.name) as number) - (this.position.get(b.name) as number));
  }
}
