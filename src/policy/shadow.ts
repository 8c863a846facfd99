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
 *
 * What it makes per run stays small, since it runs on every apply: the
 * candidate lists are read in place, merged in rule order as they are
 * checked (CandidateMerge), not copied and sorted per rule; the containment
 * checks are loops, not closures (3.3 million checks at 100,000 rules); and
 * a side of one CIDR, most sides, is compared as it is, without interval
 * tables (typed arrays, whose memory comes from outside the heap). Measured
 * at 100,000 rules: 1.5 GB of short-lived objects per run and 30,000 pages
 * touched for the first time (11-16 us each on this VM), 1.2 s; now 0.7 s
 * and 9,500 pages. The pages went with the per-side tables, the time with
 * the closures; reading the lists in place alone changed neither much.
 */
import { intervals4, intervals6, type Prefix } from './addresses.js';
import type { PolicyProblem } from './errors.js';
import { rulePlace, type AddressRef, type Policy, type Rule } from './model.js';
import { ruleServices } from './compile.js';
import type { ServiceAtom } from './services.js';

/** A side's addresses as what cannot change: any, group names held (closure), and CIDRs held. */
interface SideFacts {
  any: boolean;
  groups: ReadonlySet<string>;
  cidrs: CidrSet;
}

/** The groups of a side that names none (most sides are one CIDR: one set for all of them). */
const NO_GROUPS: ReadonlySet<string> = new Set();
/** No rules, and no lists of them: shared, never filled. */
const NO_RULES: number[] = [];
const NO_LISTS: number[][] = [];

/**
 * Prefixes for "is this prefix inside one of them" in log time: the ones no
 * other holds, as sorted disjoint intervals (touching ones are not joined: a
 * prefix is judged held by one earlier prefix, not by several together).
 * The intervals are made when first asked for, and never for a set of one
 * prefix (a rule's side is most often one CIDR), which is compared as it is.
 */
class CidrSet {
  private v4: { starts: Float64Array; ends: Float64Array; count: number } | null = null;
  private v6: { starts: bigint[]; ends: bigint[] } | null = null;
  constructor(readonly list: Prefix[]) {}
  contains(p: Prefix): boolean {
    if (this.list.length === 1) return prefixHolds(this.list[0], p);
    if (this.v4 === null) { this.v4 = intervals4(this.list, false); this.v6 = intervals6(this.list, false); }
    if (p.family === 4) {
      const a = p.words[0] >>> 0, b = a + 2 ** (32 - p.len) - 1;
      const i = lastAtOrBelow(this.v4.starts, this.v4.count, a);
      return i >= 0 && this.v4.ends[i] >= b;
    }
    const v6 = this.v6!;
    const a = big(p), b = a + (1n << BigInt(128 - p.len)) - 1n;
    const i = lastAtOrBelow(v6.starts, v6.starts.length, a);
    return i >= 0 && v6.ends[i] >= b;
  }
}

/** Does prefix \`e\` hold prefix \`p\` (both with their host bits zero)? */
function prefixHolds(e: Prefix, p: Prefix): boolean {
  if (e.family !== p.family || e.len > p.len) return false;
  for (let w = 0, len = e.len; len > 0; w++, len -= 32) {
    const mask = len >= 32 ? 0xffffffff : 0xffffffff << (32 - len);
    if (((e.words[w] ^ p.words[w]) & mask) !== 0) return false;
  }
  return true;
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
  if (refs.length === 1 && refs[0].kind === 'cidr') return { any: false, groups: NO_GROUPS, cidrs: new CidrSet([refs[0].prefix]) };
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
  // Loops, not every(): this runs for each candidate pair (3.3 million at 100,000 rules), and a closure each
  // time was most of the analysis's garbage.
  for (const r of later) {
    if (r.kind === 'any') return false;
    if (r.kind === 'cidr') { if (!earlier.cidrs.contains(r.prefix)) return false; continue; }
    if (earlier.groups.has(r.name)) continue;
    const c = closures.of(r.name);
    if (c.dynamic) return false;
    for (const p of c.cidrs) if (!earlier.cidrs.contains(p)) return false;
  }
  return true;
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
    else for (const p of f.cidrs.list) push(this.byCidr, cidrKey(p, p.len), i);
  }
  /** What lists() found last: one array per index, filled again by each call (a rule's candidates are read before the next). */
  private readonly found: number[][] = [];
  /** The lists of rules that may hold `ref` (together a superset), not yet joined. */
  private lists(ref: AddressRef, closures: Closures): number[][] {
    const out = this.found;
    out.length = 0;
    out.push(this.anyRules);
    if (ref.kind === 'any') return out;
    let prefix: Prefix | null = null;
    if (ref.kind === 'group') {
      out.push(this.byGroup.get(ref.name) ?? NO_RULES);
      const c = closures.of(ref.name);
      if (!c.dynamic && c.cidrs.length > 0) prefix = c.cidrs[0];
    } else prefix = ref.prefix;
    if (prefix !== null) {
      out.push(this.wideCidrRules);
      // Every prefix that holds it is one of its truncations.
      for (let len = 0; len <= prefix.len; len++) {
        const hit = this.byCidr.get(cidrKey(prefix, len));
        if (hit) out.push(hit);
      }
    }
    return out;
  }

  /** Rules that may hold `ref`, as lists (together a superset, duplicates possible; valid until this index is asked again); none for no reference. */
  candidates(ref: AddressRef | undefined, closures: Closures): number[][] {
    return ref === undefined ? NO_LISTS : this.lists(ref, closures);
  }
}

/** How many entries the lists hold together. */
function total(lists: number[][]): number {
  let n = 0;
  for (const l of lists) n += l.length;
  return n;
}

/**
 * The rules of several ascending lists in ascending order, each once, read
 * where they are: one instance serves every rule of an analysis. A rule's
 * lists are few (the \`any\` rules, a group's, the wide ones, one per prefix
 * length that holds its first CIDR), and mostly empty, which are left out.
 */
class CandidateMerge {
  private readonly lists: number[][] = [];
  private at = new Int32Array(8);
  start(lists: number[][]): void {
    this.lists.length = 0;
    for (const l of lists) if (l.length > 0) this.lists.push(l);
    if (this.at.length < this.lists.length) this.at = new Int32Array(this.lists.length * 2);
    this.at.fill(0, 0, this.lists.length);
  }
  /** The next rule, or -1 when every list is read. */
  next(): number {
    const lists = this.lists, at = this.at;
    let min = -1;
    for (let k = 0; k < lists.length; k++) {
      if (at[k] < lists[k].length) {
        const x = lists[k][at[k]];
        if (min < 0 || x < min) min = x;
      }
    }
    if (min < 0) return -1;
    // Past it in every list that holds it: a rule found through two lists is checked once.
    for (let k = 0; k < lists.length; k++) if (at[k] < lists[k].length && lists[k][at[k]] === min) at[k]++;
    return min;
  }
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const l = m.get(k);
  if (l) l.push(v); else m.set(k, [v]);
}

/**
 * The prefix of length \`len\` that holds \`p\` (len <= p.len) as a key: IPv4 as
 * one exact number (length x 2^32 + network), IPv6 as text.
 */
function cidrKey(p: Prefix, len: number): number | string {
  if (p.family === 4) return len * 2 ** 32 + (len === 0 ? 0 : (p.words[0] & (0xffffffff << (32 - len))) >>> 0);
  const w = p.words.map((x, i) => {
    const inWord = len - i * 32;
    return inWord >= 32 ? x : inWord <= 0 ? 0 : (x & ~(2 ** (32 - inWord) - 1)) >>> 0;
  });
  return `${len}/${w[0]}/${w[1]}/${w[2]}/${w[3]}`;
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
  for (const l of later) if (!someCovers(earlier, l)) return false;
  return true;
}

function someCovers(earlier: ServiceAtom[], l: ServiceAtom): boolean {
  for (const e of earlier) if (serviceCovers(e, l)) return true;
  return false;
}

function appliedCovers(earlier: Rule, later: Rule): boolean {
  if (earlier.appliedTo.length === 0) return true;
  if (later.appliedTo.length === 0) return false;
  for (const g of later.appliedTo) if (!earlier.appliedTo.includes(g)) return false;
  return true;
}

/** Does some earlier service overlap some later one without the earlier covering them all? */
function servicesOverlap(earlier: ServiceAtom[], later: ServiceAtom[]): boolean {
  for (const l of later) for (const e of earlier) if (serviceOverlaps(e, l)) return true;
  return false;
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
  const candidates = new CandidateMerge();
  const out: PolicyProblem[] = [];
  for (let i = 0; i < rules.length; i++) {
    const later = rules[i];
    // Candidates: earlier rules that may hold the first reference of the side that has fewer of them.
    // (Read only for the smaller side: a side such as `to: web` can have every earlier rule behind it.)
    const byFrom = fromIndex.candidates(later.from[0], closures);
    const byTo = toIndex.candidates(later.to[0], closures);
    candidates.start(total(byFrom) <= total(byTo) ? byFrom : byTo);
    let partly: number = -1;
    let shadowedBy = -1;
    for (let j = candidates.next(); j >= 0; j = candidates.next()) {
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
