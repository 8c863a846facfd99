/**
 * Shadowed rules: a rule that can never match because an earlier rule always
 * wins wherever it could; and rules partly shadowed: an earlier rule with
 * another action that holds both of its address sides takes part of its
 * services (the three-tier example's `no-lateral-web` drop is undercut on
 * ports 80 and 443 by `internet-to-web`, whose `from: any` allows web to web).
 *
 * Tags move workloads between groups at run time, so containment is judged
 * only on what cannot change: `any`, the same group name, CIDRs inside CIDRs
 * (also through groups made of CIDRs and nested groups), services inside
 * services, and appliedTo by group name. A rule reported here is dead under
 * every tag assignment; rules dead only under today's tags are not reported.
 *
 * Cost: the analysis runs on every apply, so it does not compare every pair
 * of rules. For each side an index maps a group name to the rules whose side
 * holds it (through nested groups), a CIDR to the rules that list it, and
 * keeps the rules whose side is `any`; a later rule's candidates are the
 * earlier rules the index finds for its first reference on the side with
 * fewer of them, and only those are checked in full.
 */
import { intervals4, intervals6, type Prefix } from './addresses.js';
import type { PolicyProblem } from './errors.js';
import { rulePlace, type AddressRef, type Policy, type Rule } from './model.js';
import { ruleServices } from './compile.js';
import type { ServiceAtom } from './services.js';

/** A side's addresses as what cannot change: any, group names held (closure), and CIDRs held. */
interface SideFacts {
  any: boolean;
  groups: Set<string>;
  cidrs: CidrSet;
}

/**
 * Prefixes for "is this prefix inside one of them" in log time: the ones no
 * other holds, as sorted disjoint intervals (touching ones are not joined: a
 * prefix is judged held by one earlier prefix, not by several together).
 */
class CidrSet {
  private readonly v4: { starts: Float64Array; ends: Float64Array; count: number };
  private readonly v6: { starts: bigint[]; ends: bigint[] };
  constructor(readonly list: Prefix[]) {
    this.v4 = intervals4(list, false);
    this.v6 = intervals6(list, false);
  }
  contains(p: Prefix): boolean {
    if (p.family === 4) {
      const a = p.words[0] >>> 0, b = a + 2 ** (32 - p.len) - 1;
      const i = lastAtOrBelow(this.v4.starts, this.v4.count, a);
      return i >= 0 && this.v4.ends[i] >= b;
    }
    const a = big(p), b = a + (1n << BigInt(128 - p.len)) - 1n;
    const i = lastAtOrBelow(this.v6.starts, this.v6.starts.length, a);
    return i >= 0 && this.v6.ends[i] >= b;
  }
}

function big(p: Prefix): bigint {
  return p.words.reduce((acc, w) => (acc << 32n) | BigInt(w >>> 0), 0n);
}

function lastAtOrBelow<T extends number | bigint>(xs: ArrayLike<T>, n: number, x: T): number {
  let lo = 0, hi = n - 1, out = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if (xs[mid] <= x) { out = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return out;
}

/** Per-group closures, computed once per analysis. */
class Closures {
  private readonly groups = new Map<string, { groups: Set<string>; cidrs: Prefix[]; dynamic: boolean }>();
  constructor(private readonly policy: Policy) {}
  /** Groups reachable from `name` through nested groups, the CIDRs they list, and whether any selects workloads. */
  of(name: string): { groups: Set<string>; cidrs: Prefix[]; dynamic: boolean } {
    let c = this.groups.get(name);
    if (c) return c;
    const groups = new Set<string>();
    const cidrs: Prefix[] = [];
    let dynamic = false;
    const stack = [name];
    while (stack.length > 0) {
      const n = stack.pop() as string;
      if (groups.has(n)) continue;
      groups.add(n);
      const g = this.policy.groups.get(n);
      if (!g) { dynamic = true; continue; }
      if (g.tagsAnyOf.length + g.tagsAllOf.length + g.workloads.length > 0) dynamic = true;
      for (const p of g.cidrs) cidrs.push(p);
      for (const sub of g.groups) stack.push(sub);
    }
    c = { groups, cidrs, dynamic };
    this.groups.set(name, c);
    return c;
  }
  private readonly sets = new Map<string, CidrSet>();
  /** The CIDRs of `name`'s closure as a CidrSet, made once: every rule naming a group of a million addresses shares it. */
  cidrSetOf(name: string): CidrSet {
    let set = this.sets.get(name);
    if (!set) { set = new CidrSet(this.of(name).cidrs); this.sets.set(name, set); }
    return set;
  }
}

function sideFacts(refs: readonly AddressRef[], closures: Closures): SideFacts {
  if (refs.length === 1 && refs[0].kind === 'group') {
    const name = refs[0].name;
    return { any: false, groups: closures.of(name).groups, cidrs: closures.cidrSetOf(name) };
  }
  const groups = new Set<string>();
  const cidrs: Prefix[] = [];
  let any = false;
  for (const r of refs) {
    if (r.kind === 'any') any = true;
    else if (r.kind === 'cidr') cidrs.push(r.prefix);
    else {
      const c = closures.of(r.name);
      for (const g of c.groups) groups.add(g);
      for (const p of c.cidrs) cidrs.push(p);
    }
  }
  return { any, groups, cidrs: new CidrSet(cidrs) };
}

/** Does an earlier side hold every address a later side can ever hold? */
function sideCovers(earlier: SideFacts, later: readonly AddressRef[], closures: Closures): boolean {
  if (earlier.any) return true;
  return later.every((r) => {
    if (r.kind === 'any') return false;
    if (r.kind === 'cidr') return earlier.cidrs.contains(r.prefix);
    if (earlier.groups.has(r.name)) return true;
    const c = closures.of(r.name);
    return !c.dynamic && c.cidrs.every((p) => earlier.cidrs.contains(p));
  });
}

/** A CIDR-heavy side is checked against every later rule instead of being indexed CIDR by CIDR. */
const INDEXED_CIDRS = 64;

/** One side's index over the rules: which rules can hold a reference. */
class SideIndex {
  readonly anyRules: number[] = [];
  private readonly byGroup = new Map<string, number[]>();
  private readonly byCidr = new Map<number | string, number[]>();
  private readonly wideCidrRules: number[] = [];
  add(i: number, f: SideFacts): void {
    if (f.any) { this.anyRules.push(i); return; }
    for (const g of f.groups) push(this.byGroup, g, i);
    if (f.cidrs.list.length > INDEXED_CIDRS) this.wideCidrRules.push(i);
    else for (const p of f.cidrs.list) push(this.byCidr, cidrKey(p.family, p.words, p.len), i);
  }
  /** The lists of rules that may hold `ref` (together a superset), not yet joined. */
  private lists(ref: AddressRef, closures: Closures): number[][] {
    const out = [this.anyRules];
    if (ref.kind === 'any') return out;
    const prefixes: Prefix[] = [];
    if (ref.kind === 'group') {
      out.push(this.byGroup.get(ref.name) ?? []);
      const c = closures.of(ref.name);
      if (!c.dynamic && c.cidrs.length > 0) prefixes.push(c.cidrs[0]);
    } else prefixes.push(ref.prefix);
    for (const p of prefixes) {
      out.push(this.wideCidrRules);
      // Every prefix that holds p is one of p's truncations.
      for (let len = 0; len <= p.len; len++) {
        const hit = this.byCidr.get(cidrKey(p.family, truncated(p, len), len));
        if (hit) out.push(hit);
      }
    }
    return out;
  }

  /** Rules that may hold `ref`, as lists (together a superset, duplicates possible); none for no reference. */
  candidates(ref: AddressRef | undefined, closures: Closures): number[][] {
    return ref === undefined ? [] : this.lists(ref, closures);
  }
}

/** How many entries the lists hold together. */
function total(lists: number[][]): number {
  let n = 0;
  for (const l of lists) n += l.length;
  return n;
}

/** Lists joined and sorted ascending. */
function joined(lists: number[][]): number[] {
  const out: number[] = [];
  for (const l of lists) for (const x of l) out.push(x);
  return out.sort((a, b) => a - b);
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const l = m.get(k);
  if (l) l.push(v); else m.set(k, [v]);
}

/** An IPv4 prefix as one exact number (length x 2^32 + network); IPv6 as text. */
function cidrKey(family: number, words: readonly number[], len: number): number | string {
  if (family === 4) return len * 2 ** 32 + (words[0] >>> 0);
  return `${len}/${words[0]}/${words[1]}/${words[2]}/${words[3]}`;
}

function truncated(p: Prefix, len: number): number[] {
  if (p.family === 4) return [len === 0 ? 0 : (p.words[0] & (0xffffffff << (32 - len))) >>> 0, 0, 0, 0];
  return p.words.map((w, i) => {
    const inWord = len - i * 32;
    return inWord >= 32 ? w : inWord <= 0 ? 0 : (w & ~(2 ** (32 - inWord) - 1)) >>> 0;
  });
}

function serviceCovers(e: ServiceAtom, l: ServiceAtom): boolean {
  if (e.kind === 'ether' || l.kind === 'ether') return e.kind === 'ether' && l.kind === 'ether' && e.ethertype === l.ethertype;
  if (l.kind === 'resolve') return e.kind === 'resolve' ? e.family === l.family : e.proto < 0 && (e.family === 0 || e.family === l.family);
  if (e.kind === 'resolve') return false;
  if (e.proto >= 0 && e.proto !== l.proto) return false;
  if (e.family !== 0 && e.family !== l.family) return false;
  return e.sport[0] <= l.sport[0] && e.sport[1] >= l.sport[1] && e.dport[0] <= l.dport[0] && e.dport[1] >= l.dport[1];
}

function servicesCover(earlier: ServiceAtom[], later: ServiceAtom[]): boolean {
  return later.every((l) => earlier.some((e) => serviceCovers(e, l)));
}

function appliedCovers(earlier: Rule, later: Rule): boolean {
  if (earlier.appliedTo.length === 0) return true;
  if (later.appliedTo.length === 0) return false;
  return later.appliedTo.every((g) => earlier.appliedTo.includes(g));
}

/** Does some earlier service overlap some later one without the earlier covering them all? */
function servicesOverlap(earlier: ServiceAtom[], later: ServiceAtom[]): boolean {
  return later.some((l) => earlier.some((e) => serviceOverlaps(e, l)));
}

function serviceOverlaps(e: ServiceAtom, l: ServiceAtom): boolean {
  if (e.kind !== 'ip' || l.kind !== 'ip') return serviceCovers(e, l) || serviceCovers(l, e);
  if (e.proto >= 0 && l.proto >= 0 && e.proto !== l.proto) return false;
  if (e.family !== 0 && l.family !== 0 && e.family !== l.family) return false;
  return e.sport[0] <= l.sport[1] && l.sport[0] <= e.sport[1] && e.dport[0] <= l.dport[1] && l.dport[0] <= e.dport[1];
}

function serviceList(atoms: ServiceAtom[]): string {
  return atoms.map((a) => (a.kind === 'ip' ? `${a.proto < 0 ? 'ip' : a.proto}${a.dport[0] === 0 && a.dport[1] === 65535 ? '' : `/${a.dport[0]}${a.dport[1] === a.dport[0] ? '' : `-${a.dport[1]}`}`}` : a.kind)).join(', ');
}

export function findShadowedRules(policy: Policy): PolicyProblem[] {
  // The rules that can match, and the order of each (where it stands: RulePlaces).
  const rules: Rule[] = [], orders: number[] = [];
  let order = 0;
  for (const s of policy.sections) for (const r of s.rules) { if (!r.disabled) { rules.push(r); orders.push(order); } order++; }
  const closures = new Closures(policy);
  const services = rules.map((r) => ruleServices(r, policy));
  const from = rules.map((r) => sideFacts(r.from, closures));
  const to = rules.map((r) => sideFacts(r.to, closures));
  const fromIndex = new SideIndex(), toIndex = new SideIndex();
  const out: PolicyProblem[] = [];
  for (let i = 0; i < rules.length; i++) {
    const later = rules[i];
    // Candidates: earlier rules that may hold the first reference of the side that has fewer of them.
    // (Joined only for the smaller side: a side such as `to: web` can have every earlier rule behind it.)
    const byFrom = fromIndex.candidates(later.from[0], closures);
    const byTo = toIndex.candidates(later.to[0], closures);
    const candidates = joined(total(byFrom) <= total(byTo) ? byFrom : byTo);
    let partly: number = -1;
    let shadowedBy = -1;
    let last = -1;
    for (const j of candidates) {
      if (j === last) continue;
      last = j;
      const earlier = rules[j];
      if (!appliedCovers(earlier, later) || !sideCovers(from[j], later.from, closures) || !sideCovers(to[j], later.to, closures)) continue;
      if (servicesCover(services[j], services[i])) { shadowedBy = j; break; }
      if (partly < 0 && earlier.action !== later.action && servicesOverlap(services[j], services[i])) partly = j;
    }
    if (shadowedBy >= 0 || partly >= 0) {
      const at = { severity: 'warning' as const, file: policy.source, ...rulePlace(policy, orders[i]) };
      if (shadowedBy >= 0) {
        const earlier = rules[shadowedBy];
        out.push({ ...at, code: 'shadowed-rule', message: `rule '${later.id}' can never match: rule '${earlier.id}' (${rulePlace(policy, orders[shadowedBy]).path}) comes first and matches everything it does` });
      } else {
        const earlier = rules[partly];
        out.push({ ...at, code: 'partly-shadowed-rule', message: `rule '${later.id}' is partly shadowed: rule '${earlier.id}' (${rulePlace(policy, orders[partly]).path}) comes first, holds both of its address sides and ${earlier.action}s ${serviceList(services[partly])} of what it would ${later.action}` });
      }
    }
    fromIndex.add(i, from[i]);
    toIndex.add(i, to[i]);
  }
  return out;
}
