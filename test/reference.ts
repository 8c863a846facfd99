/**
 * Naive reference matchers, kept only for tests: the obvious code, written
 * without the compiled structures, that the fast paths are compared against.
 */
import { prefixContains, prefixEquals, prefixTruncate, type Prefix } from '../src/policy/addresses.js';
import type { CompiledPolicy } from '../src/policy/compile.js';
import { ruleServices } from '../src/policy/compile.js';
import type { Action, AddressRef, Policy, Rule } from '../src/policy/model.js';

/** A box rule over plain unsigned numbers: lo[d] <= key[d] <= hi[d] for every d. */
export interface BoxRule { lo: number[]; hi: number[] }

export function naiveFirstMatch(rules: BoxRule[], key: number[]): number {
  for (let r = 0; r < rules.length; r++) {
    const { lo, hi } = rules[r];
    if (key.every((k, d) => lo[d] <= k && k <= hi[d])) return r;
  }
  return -1;
}

function addrMatches(policy: Policy, compiled: CompiledPolicy, refs: readonly AddressRef[], addr: Prefix): boolean {
  return refs.some((r) => {
    if (r.kind === 'any') return true;
    if (r.kind === 'cidr') return prefixContains(r.prefix, addr);
    // Group membership straight from the model: tags, names, CIDRs, nested groups.
    const inGroup = (name: string, seen: Set<string>): boolean => {
      if (seen.has(name)) return false;
      seen.add(name);
      const g = policy.groups.get(name)!;
      if (g.cidrs.some((c) => prefixContains(c, addr))) return true;
      for (const w of policy.workloads.values()) {
        const member = g.workloads.includes(w.name) ||
          (g.tagsAnyOf.length > 0 && g.tagsAnyOf.some((t) => w.tags.includes(t))) ||
          (g.tagsAllOf.length > 0 && g.tagsAllOf.every((t) => w.tags.includes(t)));
        if (member && w.ips.some((p) => prefixContains(p, addr))) return true;
      }
      return g.groups.some((sub) => inGroup(sub, seen));
    };
    return inGroup(r.name, new Set());
  });
}

function appliesAt(policy: Policy, rule: Rule, workload: string): boolean {
  if (rule.disabled) return false;
  if (rule.appliedTo.length === 0) return true;
  const w = policy.workloads.get(workload)!;
  const member = (name: string, seen: Set<string>): boolean => {
    if (seen.has(name)) return false;
    seen.add(name);
    const g = policy.groups.get(name)!;
    return g.workloads.includes(w.name) ||
      (g.tagsAnyOf.length > 0 && g.tagsAnyOf.some((t) => w.tags.includes(t))) ||
      (g.tagsAllOf.length > 0 && g.tagsAllOf.every((t) => w.tags.includes(t))) ||
      g.groups.some((s) => member(s, seen));
  };
  return rule.appliedTo.some((g) => member(g, new Set()));
}

/** The rule (order) that decides an IP packet at a workload's vNIC, by reading the policy top to bottom. */
export function naivePolicyDecide(
  policy: Policy, compiled: CompiledPolicy, workload: string,
  src: Prefix, dst: Prefix, proto: number, sport: number, dport: number,
): { order: number; action: Action } {
  let order = -1;
  for (const rule of policy.sections.flatMap((s) => s.rules)) {
    order++;
    if (!appliesAt(policy, rule, workload)) continue;
    if (!addrMatches(policy, compiled, rule.from, src) || !addrMatches(policy, compiled, rule.to, dst)) continue;
    const svc = ruleServices(rule, policy).some((a) => a.kind === 'ip' &&
      (a.family === 0 || a.family === src.family) &&
      (a.proto < 0 || a.proto === proto) &&
      a.sport[0] <= sport && sport <= a.sport[1] && a.dport[0] <= dport && dport <= a.dport[1]);
    if (svc) return { order, action: rule.action };
  }
  return { order: -1, action: policy.default };
}

/**
 * Prefix aggregation the obvious way: drop held prefixes, merge sibling
 * pairs into their parent, repeat until nothing changes.
 */
export function naivePrefixAggregate(list: readonly Prefix[]): Prefix[] {
  const sorted = [...list].sort(comparePrefix);
  let out: Prefix[] = [];
  for (const p of sorted) {
    if (out.length > 0 && prefixContains(out[out.length - 1], p)) continue;
    out.push(p);
  }
  for (let changed = true; changed; ) {
    changed = false;
    const merged: Prefix[] = [];
    for (let i = 0; i < out.length; i++) {
      const a = out[i], b = out[i + 1];
      if (b && a.family === b.family && a.len === b.len && a.len > 0) {
        const parent = prefixTruncate(a, a.len - 1);
        if (prefixContains(parent, b) && !prefixEquals(a, b)) {
          merged.push(parent);
          i++;
          changed = true;
          continue;
        }
      }
      merged.push(a);
    }
    // A merge can create a parent that now holds its neighbour: drop those.
    out = [];
    for (const p of merged) {
      if (out.length > 0 && prefixContains(out[out.length - 1], p)) continue;
      out.push(p);
    }
  }
  return out;
}
function comparePrefix(a: Prefix, b: Prefix): number {
  if (a.family !== b.family) return a.family - b.family;
  for (let i = 0; i < 4; i++) if (a.words[i] !== b.words[i]) return a.words[i] - b.words[i];
  return a.len - b.len;
}

/**
 * Shadowed and partly shadowed rules by comparing every pair (what the
 * indexed analysis in src/policy/shadow.ts must report): per later rule, the
 * first earlier rule that holds it entirely, else the first earlier rule with
 * another action that holds both address sides and overlaps its services.
 */
export function naiveShadows(policy: Policy): Array<{ rule: string; by: string; partly: boolean }> {
  const closure = (name: string, seen = new Set<string>()): { groups: Set<string>; cidrs: Prefix[]; dynamic: boolean } => {
    const out = { groups: seen, cidrs: [] as Prefix[], dynamic: false };
    if (seen.has(name)) return out;
    seen.add(name);
    const g = policy.groups.get(name);
    if (!g) return { ...out, dynamic: true };
    out.dynamic = g.tagsAnyOf.length + g.tagsAllOf.length + g.workloads.length > 0;
    out.cidrs.push(...g.cidrs);
    for (const sub of g.groups) {
      const c = closure(sub, seen);
      out.cidrs.push(...c.cidrs);
      out.dynamic ||= c.dynamic;
    }
    return out;
  };
  const covers = (earlier: readonly AddressRef[], later: readonly AddressRef[]): boolean => {
    if (earlier.some((r) => r.kind === 'any')) return true;
    const groups = new Set<string>();
    const cidrs: Prefix[] = [];
    for (const r of earlier) {
      if (r.kind === 'cidr') cidrs.push(r.prefix);
      else if (r.kind === 'group') { const c = closure(r.name); c.groups.forEach((g) => groups.add(g)); cidrs.push(...c.cidrs); }
    }
    const held = (p: Prefix) => cidrs.some((e) => prefixContains(e, p));
    return later.every((r) => {
      if (r.kind === 'any') return false;
      if (r.kind === 'cidr') return held(r.prefix);
      if (groups.has(r.name)) return true;
      const c = closure(r.name);
      return !c.dynamic && c.cidrs.every(held);
    });
  };
  const svcCovers = (e: ServiceAtom, l: ServiceAtom): boolean => {
    if (e.kind === 'ether' || l.kind === 'ether') return e.kind === 'ether' && l.kind === 'ether' && e.ethertype === l.ethertype;
    if (l.kind === 'resolve') return e.kind === 'resolve' ? e.family === l.family : e.proto < 0 && (e.family === 0 || e.family === l.family);
    if (e.kind === 'resolve') return false;
    return (e.proto < 0 || e.proto === l.proto) && (e.family === 0 || e.family === l.family) &&
      e.sport[0] <= l.sport[0] && e.sport[1] >= l.sport[1] && e.dport[0] <= l.dport[0] && e.dport[1] >= l.dport[1];
  };
  const svcOverlaps = (e: ServiceAtom, l: ServiceAtom): boolean => {
    if (e.kind !== 'ip' || l.kind !== 'ip') return svcCovers(e, l) || svcCovers(l, e);
    if (e.proto >= 0 && l.proto >= 0 && e.proto !== l.proto) return false;
    if (e.family !== 0 && l.family !== 0 && e.family !== l.family) return false;
    return e.sport[0] <= l.sport[1] && l.sport[0] <= e.sport[1] && e.dport[0] <= l.dport[1] && l.dport[0] <= e.dport[1];
  };
  const applied = (e: Rule, l: Rule) => e.appliedTo.length === 0 || (l.appliedTo.length > 0 && l.appliedTo.every((g) => e.appliedTo.includes(g)));
  const rules = policy.sections.flatMap((s) => s.rules).filter((r) => !r.disabled);
  const out: Array<{ rule: string; by: string; partly: boolean }> = [];
  for (let i = 0; i < rules.length; i++) {
    const l = rules[i], ls = ruleServices(l, policy);
    let partly: Rule | null = null, full: Rule | null = null;
    for (let j = 0; j < i; j++) {
      const e = rules[j], es = ruleServices(e, policy);
      if (!applied(e, l) || !covers(e.from, l.from) || !covers(e.to, l.to)) continue;
      if (ls.every((x) => es.some((y) => svcCovers(y, x)))) { full = e; break; }
      if (!partly && e.action !== l.action && ls.some((x) => es.some((y) => svcOverlaps(y, x)))) partly = e;
    }
    if (full) out.push({ rule: l.id, by: full.id, partly: false });
    else if (partly) out.push({ rule: l.id, by: partly.id, partly: true });
  }
  return out;
}
