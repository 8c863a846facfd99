/**
 * Shadowed rules: a rule that can never match because an earlier rule always
 * wins wherever it could.
 *
 * Tags move workloads between groups at run time, so containment is judged
 * only on what cannot change: `any`, the same group name, CIDRs inside CIDRs
 * (also through groups made of CIDRs and nested groups), services inside
 * services, and appliedTo by group name. A rule reported here is dead under
 * every tag assignment; rules dead only under today's tags are not reported.
 */
import { prefixContains, type Prefix } from './addresses.js';
import type { PolicyProblem } from './errors.js';
import type { AddressRef, Policy, Rule } from './model.js';
import { ruleServices } from './compile.js';
import type { ServiceAtom } from './services.js';

/** Groups reachable from `name` through nested groups, and the CIDRs they list. */
function staticClosure(policy: Policy, name: string): { groups: Set<string>; cidrs: Prefix[] } {
  const groups = new Set<string>();
  const cidrs: Prefix[] = [];
  const walk = (n: string) => {
    if (groups.has(n)) return;
    groups.add(n);
    const g = policy.groups.get(n);
    if (!g) return;
    cidrs.push(...g.cidrs);
    g.groups.forEach(walk);
  };
  walk(name);
  return { groups, cidrs };
}

/** Is a group made only of CIDRs (directly and through nested groups)? Then its addresses are static. */
function staticCidrs(policy: Policy, name: string): Prefix[] | null {
  const { groups, cidrs } = staticClosure(policy, name);
  for (const n of groups) {
    const g = policy.groups.get(n);
    if (!g || g.tagsAnyOf.length + g.tagsAllOf.length + g.workloads.length > 0) return null;
  }
  return cidrs;
}

function sideCovers(policy: Policy, earlier: AddressRef[], later: AddressRef[]): boolean {
  if (earlier.some((r) => r.kind === 'any')) return true;
  const eGroups = new Set<string>();
  const eCidrs: Prefix[] = [];
  for (const r of earlier) {
    if (r.kind === 'cidr') eCidrs.push(r.prefix);
    else if (r.kind === 'group') {
      const c = staticClosure(policy, r.name);
      c.groups.forEach((g) => eGroups.add(g));
      eCidrs.push(...c.cidrs);
    }
  }
  const inCidrs = (p: Prefix) => eCidrs.some((e) => prefixContains(e, p));
  return later.every((r) => {
    if (r.kind === 'any') return false;
    if (r.kind === 'cidr') return inCidrs(r.prefix);
    if (eGroups.has(r.name)) return true;
    const cidrs = staticCidrs(policy, r.name);
    return cidrs !== null && cidrs.every(inCidrs);
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

export function findShadowedRules(policy: Policy): PolicyProblem[] {
  const rules = policy.sections.flatMap((s) => s.rules).filter((r) => !r.disabled);
  const services = new Map(rules.map((r) => [r.order, ruleServices(r, policy)]));
  const out: PolicyProblem[] = [];
  for (let i = 0; i < rules.length; i++) {
    const later = rules[i];
    for (let j = 0; j < i; j++) {
      const earlier = rules[j];
      if (
        appliedCovers(earlier, later) &&
        sideCovers(policy, earlier.from, later.from) &&
        sideCovers(policy, earlier.to, later.to) &&
        servicesCover(services.get(earlier.order)!, services.get(later.order)!)
      ) {
        out.push({
          severity: 'warning',
          code: 'shadowed-rule',
          file: policy.source,
          line: later.line,
          column: later.column,
          path: later.path,
          message: `rule '${later.id}' can never match: rule '${earlier.id}' (${earlier.path}) comes first and matches everything it does`,
        });
        break;
      }
    }
  }
  return out;
}
