// The indexed shadow analysis against comparing every pair of rules
// (test/reference.ts): random policies with tag groups, CIDR groups that
// nest and overlap, CIDRs, services and appliedTo; and the three-tier
// example's undercut rule in its old place.
import t from 'tap';
import { policyFromData, policyParse } from '../src/policy/load.js';
import { findShadowedRules } from '../src/policy/shadow.js';
import { naiveShadows } from './reference.js';
import { pick, randInt, rng } from './rng.js';

const CIDRS = ['10.0.0.0/8', '10.0.0.0/9', '10.128.0.0/9', '10.1.0.0/16', '10.1.2.0/24', '10.1.2.0/25', '10.1.2.128/25', 'fd00::/16', 'fd00:1::/32', '0.0.0.0/0', '10.1.2.7/32'];
const SERVICES = ['tcp/80', 'tcp/443', 'tcp/1-1000', 'tcp', 'udp/53', 'udp/1-100', 'icmp', 'icmp/echo-request', 'ip/47', 'arp', 'nd'];

function randomPolicy(r: () => number): unknown {
  const groups: Record<string, unknown> = {};
  const nG = randInt(r, 1, 8);
  for (let g = 0; g < nG; g++) {
    const kind = randInt(r, 0, 3);
    if (kind === 0) groups[`g${g}`] = { tags: [pick(r, ['web', 'app', 'db'])] };
    else if (kind === 1 || g === 0) groups[`g${g}`] = { cidrs: Array.from({ length: randInt(r, 1, 3) }, () => pick(r, CIDRS)) };
    else if (kind === 2) groups[`g${g}`] = { groups: [`g${randInt(r, 0, g - 1)}`] };
    else groups[`g${g}`] = { groups: [`g${randInt(r, 0, g - 1)}`], cidrs: [pick(r, CIDRS)] };
  }
  const side = () => (r() < 0.2 ? 'any' : r() < 0.3 ? pick(r, CIDRS) : Array.from({ length: randInt(r, 1, 2) }, () => `g${randInt(r, 0, nG - 1)}`));
  const rules = Array.from({ length: randInt(r, 2, 30) }, (_, i) => {
    const rule: Record<string, unknown> = { id: `r${i}`, from: side(), to: side(), action: pick(r, ['allow', 'drop', 'reject']) };
    if (r() < 0.7) rule.services = Array.from({ length: randInt(r, 1, 2) }, () => pick(r, SERVICES));
    if (r() < 0.15) rule.appliedTo = [`g${randInt(r, 0, nG - 1)}`];
    return rule;
  });
  return {
    workloads: { w1: { nic: 'tw1', mac: '02:00:00:00:00:01', ips: ['10.1.2.3'], tags: ['web'] } },
    groups,
    sections: [{ name: 's', rules }],
  };
}

t.test('the indexed analysis reports what comparing every pair reports', async (t) => {
  let bad = 0, first = '', reported = 0, partly = 0;
  for (let seed = 1; seed <= 400; seed++) {
    const { policy } = policyFromData(randomPolicy(rng(seed)) as never, `seed-${seed}`, undefined, { shadows: false });
    if (!policy) continue;
    const got = findShadowedRules(policy).map((p) => `${p.code} ${p.message.match(/rule '([^']+)'/)![1]} by ${p.message.match(/rule '([^']+)' \(/)![1]}`);
    const want = naiveShadows(policy).map((s) => `${s.partly ? 'partly-shadowed-rule' : 'shadowed-rule'} ${s.rule} by ${s.by}`);
    reported += want.length;
    partly += want.filter((w) => w.startsWith('partly')).length;
    if (JSON.stringify(got) !== JSON.stringify(want)) { bad++; first ||= `seed ${seed}: ${got.join('; ')} vs ${want.join('; ')}`; }
  }
  t.equal(bad, 0, `the same findings ${first}`);
  t.ok(reported > 100 && partly > 20, `the generated policies have findings of both kinds (${reported}, ${partly} partly)`);
});

t.test('an allow from any undercuts a later drop between members of one tier', async (t) => {
  const text = `workloads:
  web-1: { nic: tw-w1, mac: "02:00:00:00:00:01", ips: [10.0.1.11], tags: [web] }
groups:
  web: { tags: [web] }
sections:
  - name: application
    rules:
      - { id: internet-to-web, from: any, to: web, services: [tcp/80, tcp/443], action: allow }
      - { id: no-lateral-web, from: web, to: web, action: drop }
`;
  const { problems } = policyParse(text, 'p.yaml');
  const found = problems.filter((p) => p.code === 'partly-shadowed-rule');
  t.equal(found.length, 1);
  t.match(found[0], { path: 'sections[0].rules[1]', line: 9, severity: 'warning', message: /rule 'no-lateral-web' is partly shadowed: rule 'internet-to-web' .* allows 6\/80, 6\/443 of what it would drop/ });
});
