/**
 * Naive reference matchers, kept only for tests: the obvious code, written
 * without the compiled structures, that the fast paths are compared against.
 */
import { prefixContains, type Prefix } from '../src/policy/addresses.js';
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

function addrMatches(policy: Policy, compiled: CompiledPolicy, refs: AddressRef[], addr: Prefix): boolean {
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
  for (const rule of policy.sections.flatMap((s) => s.rules)) {
    if (!appliesAt(policy, rule, workload)) continue;
    if (!addrMatches(policy, compiled, rule.from, src) || !addrMatches(policy, compiled, rule.to, dst)) continue;
    const svc = ruleServices(rule, policy).some((a) => a.kind === 'ip' &&
      (a.family === 0 || a.family === src.family) &&
      (a.proto < 0 || a.proto === proto) &&
      a.sport[0] <= sport && sport <= a.sport[1] && a.dport[0] <= dport && dport <= a.dport[1]);
    if (svc) return { order: rule.order, action: rule.action };
  }
  return { order: -1, action: policy.default };
}
