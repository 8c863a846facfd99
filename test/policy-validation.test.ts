// Every validation error, with its exact file, line, column and path.
import t from 'tap';
import { policyParse } from '../src/policy/load.js';
import { parsePrefix } from '../src/policy/addresses.js';
import { rulePlace } from '../src/policy/model.js';

const BASE_WORKLOADS = `workloads:
  web-1: { nic: tw-web1, mac: "02:00:00:00:01:11", ips: [10.0.1.11], tags: [web] }
  db-1: { nic: tw-db1, mac: "02:00:00:00:03:31", ips: [10.0.3.31, "fd00::31"], tags: [db] }
`;

interface Case {
  name: string;
  text: string;
  code: string;
  path: string;
  line: number;
  column: number;
  message?: RegExp;
}

const cases: Case[] = [
  { name: 'unknown top-level key', text: `colour: blue\nsections: []\n`, code: 'unknown-key', path: 'colour', line: 1, column: 1, message: /expected one of: version, default/ },
  { name: 'unknown rule key', text: `sections:\n  - name: a\n    rules:\n      - id: r1\n        from: any\n        to: any\n        acton: allow\n`, code: 'unknown-key', path: 'sections[0].rules[0].acton', line: 7, column: 9 },
  { name: 'wrong type for spoofguard', text: `spoofguard: "on"\nsections: []\n`, code: 'wrong-type', path: 'spoofguard', line: 1, column: 13, message: /expected true or false, found the string 'on'/ },
  { name: 'bad default action', text: `default: deny\nsections: []\n`, code: 'bad-value', path: 'default', line: 1, column: 10, message: /allow, drop, reject/ },
  { name: 'sections not a list', text: `sections: {}\n`, code: 'wrong-type', path: 'sections', line: 1, column: 11 },
  { name: 'missing sections', text: `default: drop\n`, code: 'missing-key', path: '(document)', line: 1, column: 1 },
  { name: 'bad MAC', text: `workloads:\n  w: { nic: tw-w, mac: "02:00:00:00:01", ips: [10.0.0.1] }\nsections: []\n`, code: 'bad-mac', path: 'workloads.w.mac', line: 2, column: 24 },
  { name: 'multicast MAC', text: `workloads:\n  w: { nic: tw-w, mac: "01:00:5e:00:00:01", ips: [10.0.0.1] }\nsections: []\n`, code: 'bad-mac', path: 'workloads.w.mac', line: 2, column: 24, message: /multicast/ },
  { name: 'bad IP', text: `workloads:\n  w: { nic: tw-w, mac: "02:00:00:00:00:01", ips: [10.0.0.256] }\nsections: []\n`, code: 'bad-address', path: 'workloads.w.ips[0]', line: 2, column: 51 },
  { name: 'CIDR where an address is expected', text: `workloads:\n  w:\n    nic: tw-w\n    mac: "02:00:00:00:00:01"\n    ips: [10.0.0.0/24]\n`, code: 'bad-address', path: 'workloads.w.ips[0]', line: 5, column: 11 },
  { name: 'bad CIDR', text: `groups:\n  g: { cidrs: [10.0.0.0/33] }\nsections: []\n`, code: 'bad-address', path: 'groups.g.cidrs[0]', line: 2, column: 16 },
  { name: 'bad IPv6 CIDR', text: `groups:\n  g:\n    cidrs:\n      - "fd00::/129"\nsections: []\n`, code: 'bad-address', path: 'groups.g.cidrs[0]', line: 4, column: 9 },
  { name: 'bad CIDR further down the list', text: `groups:\n  g: { cidrs: [10.0.0.0/8, 10.1.0.0/16, 10.2.0.0/40] }\nsections: []\n`, code: 'bad-address', path: 'groups.g.cidrs[2]', line: 2, column: 41 },
  { name: 'a number in a list of CIDRs', text: `groups:\n  g: { cidrs: [10.0.0.0/8, 7] }\nsections: []\n`, code: 'wrong-type', path: 'groups.g.cidrs[1]', line: 2, column: 28 },
  { name: 'interface name too long', text: `workloads:\n  w: { nic: tw-this-is-too-long, mac: "02:00:00:00:00:01" }\nsections: []\n`, code: 'bad-name', path: 'workloads.w.nic', line: 2, column: 13 },
  { name: 'missing nic', text: `workloads:\n  w: { mac: "02:00:00:00:00:01" }\nsections: []\n`, code: 'missing-key', path: 'workloads.w', line: 2, column: 6 },
  { name: 'two workloads claim a vNIC', text: `${BASE_WORKLOADS}  web-2: { nic: tw-web1, mac: "02:00:00:00:01:12", ips: [10.0.1.12] }\nsections: []\n`, code: 'duplicate-nic', path: 'workloads["web-2"].nic', line: 4, column: 17, message: /already claimed by workload 'web-1'/ },
  { name: 'two workloads claim a MAC', text: `${BASE_WORKLOADS}  web-2: { nic: tw-web2, mac: "02:00:00:00:01:11", ips: [10.0.1.12] }\nsections: []\n`, code: 'duplicate-mac', path: 'workloads["web-2"].mac', line: 4, column: 31 },
  { name: 'two workloads claim an IP', text: `${BASE_WORKLOADS}  web-2: { nic: tw-web2, mac: "02:00:00:00:01:12", ips: [10.0.1.12, "fd00:0::31"] }\nsections: []\n`, code: 'duplicate-ip', path: 'workloads["web-2"].ips[1]', line: 4, column: 69, message: /already claimed by workload 'db-1'/ },
  { name: 'group names an unknown workload', text: `${BASE_WORKLOADS}groups:\n  g: { workloads: [web-9] }\nsections: []\n`, code: 'unknown-workload', path: 'groups.g.workloads[0]', line: 5, column: 20, message: /did you mean 'web-1'/ },
  { name: 'group names an unknown group', text: `groups:\n  g: { groups: [nope] }\nsections: []\n`, code: 'unknown-group', path: 'groups.g.groups[0]', line: 2, column: 17 },
  { name: 'cycle between groups', text: `groups:\n  a: { groups: [b] }\n  b: { groups: [c] }\n  c: { groups: [a] }\nsections: []\n`, code: 'group-cycle', path: 'groups.c.groups[0]', line: 4, column: 17, message: /a -> b -> c -> a/ },
  { name: 'group named any', text: `groups:\n  any: { cidrs: [10.0.0.0/8] }\nsections: []\n`, code: 'reserved-name', path: 'groups.any', line: 2, column: 3 },
  { name: 'port out of range', text: `services:\n  s: tcp/65536\nsections: []\n`, code: 'bad-service', path: 'services.s', line: 2, column: 6, message: /65536 is out of range/ },
  { name: 'backwards port range', text: `services:\n  s: [udp/53, tcp/2000-1000]\nsections: []\n`, code: 'bad-service', path: 'services.s[1]', line: 2, column: 15, message: /runs backwards/ },
  { name: 'unknown ICMP type', text: `services:\n  s: icmp/echo-requets\nsections: []\n`, code: 'bad-service', path: 'services.s', line: 2, column: 6, message: /unknown icmp type/ },
  { name: 'EtherType below 0x0600', text: `services:\n  s: ether/0x0100\nsections: []\n`, code: 'bad-service', path: 'services.s', line: 2, column: 6 },
  { name: 'unknown service reference', text: `sections:\n  - name: a\n    rules:\n      - { id: r1, from: any, to: any, services: [postgress], action: allow }\n`, code: 'unknown-service', path: 'sections[0].rules[0].services[0]', line: 4, column: 50 },
  { name: 'unknown group reference', text: `groups:\n  web: { tags: [web] }\nsections:\n  - name: a\n    rules:\n      - id: r1\n        from: webb\n        to: any\n        action: allow\n`, code: 'unknown-group', path: 'sections[0].rules[0].from', line: 7, column: 15, message: /did you mean 'web'/ },
  { name: 'unknown group in a from list', text: `sections:\n  - name: a\n    rules:\n      - id: r1\n        from: [any, nope]\n        to: any\n        action: allow\n`, code: 'unknown-group', path: 'sections[0].rules[0].from[1]', line: 5, column: 21 },
  { name: 'bad CIDR in a rule', text: `sections:\n  - name: a\n    rules:\n      - id: r1\n        from: 10.0.0.0/40\n        to: any\n        action: allow\n`, code: 'bad-address', path: 'sections[0].rules[0].from', line: 5, column: 15 },
  { name: 'duplicate rule id', text: `sections:\n  - name: a\n    rules:\n      - { id: r1, from: any, to: any, action: allow }\n  - name: b\n    rules:\n      - { id: r1, from: any, to: any, action: drop }\n`, code: 'duplicate-id', path: 'sections[1].rules[0].id', line: 7, column: 15, message: /already used at sections\[0\]\.rules\[0\]/ },
  { name: 'duplicate section name', text: `sections:\n  - name: a\n  - name: a\n`, code: 'duplicate-section', path: 'sections[1].name', line: 3, column: 11 },
  { name: 'missing action', text: `sections:\n  - name: a\n    rules:\n      - { id: r1, from: any, to: any }\n`, code: 'missing-key', path: 'sections[0].rules[0]', line: 4, column: 9 },
  { name: 'bad action', text: `sections:\n  - name: a\n    rules:\n      - { id: r1, from: any, to: any, action: permit }\n`, code: 'bad-value', path: 'sections[0].rules[0].action', line: 4, column: 47 },
  { name: 'missing to', text: `sections:\n  - name: a\n    rules:\n      - { id: r1, from: any, action: drop }\n`, code: 'missing-key', path: 'sections[0].rules[0]', line: 4, column: 9, message: /has no 'to'/ },
  { name: 'appliedTo names a workload, not a group', text: `${BASE_WORKLOADS}sections:\n  - name: a\n    rules:\n      - { id: r1, from: any, to: any, action: drop, appliedTo: [web-1] }\n`, code: 'unknown-group', path: 'sections[0].rules[0].appliedTo[0]', line: 7, column: 65, message: /is a workload/ },
  { name: 'EtherType with addresses', text: `groups:\n  g: { cidrs: [10.0.0.0/8] }\nsections:\n  - name: a\n    rules:\n      - { id: r1, from: g, to: any, services: [ether/lldp], action: allow }\n`, code: 'ether-needs-any', path: 'sections[0].rules[0].services', line: 6, column: 47 },
  { name: 'log is not a boolean', text: `sections:\n  - name: a\n    rules:\n      - { id: r1, from: any, to: any, action: drop, log: 1 }\n`, code: 'wrong-type', path: 'sections[0].rules[0].log', line: 4, column: 58 },
  { name: 'duplicate key in YAML', text: `default: drop\ndefault: allow\nsections: []\n`, code: 'duplicate-key', path: '(document)', line: 2, column: 1 },
  { name: 'YAML syntax error', text: `sections: [\n  - name: a\n`, code: 'syntax', path: '(document)', line: 2, column: 3 },
];

for (const c of cases) {
  t.test(c.name, async (t) => {
    const { policy, problems } = policyParse(c.text, 'test.yaml');
    t.equal(policy, null, 'the policy is rejected');
    const hit = problems.find((p) => p.code === c.code && p.severity === 'error');
    t.ok(hit, `a ${c.code} error is reported (got: ${problems.map((p) => `${p.code} ${p.path}`).join('; ')})`);
    if (!hit) return;
    t.same({ file: hit.file, path: hit.path, line: hit.line, column: hit.column }, { file: 'test.yaml', path: c.path, line: c.line, column: c.column }, `located: ${hit.message}`);
    if (c.message) t.match(hit.message, c.message);
  });
}

t.test('every problem is reported at once', async (t) => {
  const text = `default: deny\nspoofguard: 3\nworkloads:\n  w: { nic: tw-w, mac: bad }\nsections:\n  - name: a\n    rules:\n      - { id: r1, from: nope, to: any, action: allow }\n`;
  const { problems } = policyParse(text, 'many.yaml');
  t.same(problems.map((p) => p.code).sort(), ['bad-mac', 'bad-value', 'unknown-group', 'wrong-type'].sort());
});

t.test('the same problems are found in JSON, with locations', async (t) => {
  const text = `{\n  "default": "drop",\n  "sections": [\n    { "name": "a", "rules": [ { "id": "r1", "from": "any", "to": "any", "action": "maybe" } ] }\n  ]\n}\n`;
  const { problems } = policyParse(text, 'p.json');
  t.equal(problems.length, 1);
  t.match(problems[0], { code: 'bad-value', path: 'sections[0].rules[0].action', line: 4, column: 83 });
});

t.test('warnings: shadowed rules, host bits; the policy stays valid', async (t) => {
  const text = `groups:
  web: { tags: [web] }
  nets: { cidrs: [10.0.0.0/8] }
  sub: { cidrs: [10.1.0.5/16] }
  quarantined: { tags: [quarantine] }
sections:
  - name: a
    rules:
      - { id: broad, from: nets, to: any, services: [tcp/1-1000], action: allow }
      - { id: narrow, from: sub, to: any, services: [tcp/443], action: drop }
      - { id: by-tag, from: web, to: any, services: [tcp/80], action: allow }
      - { id: by-tag-again, from: web, to: any, services: [tcp/80], action: drop }
      - { id: q, from: quarantined, to: any, action: drop }
      - { id: not-shadowed, from: web, to: any, services: [tcp/8080], action: allow }
`;
  const { policy, problems } = policyParse(text, 'w.yaml');
  t.ok(policy, 'valid');
  const shadowed = problems.filter((p) => p.code === 'shadowed-rule');
  t.same(shadowed.map((p) => p.path), ['sections[0].rules[1]', 'sections[0].rules[3]']);
  t.match(shadowed[0], { line: 10, column: 9, severity: 'warning', message: /rule 'narrow' can never match: rule 'broad'/ });
  t.ok(problems.some((p) => p.code === 'host-bits' && p.path === 'groups.sub.cidrs[0]'), 'host bits are warned about');
  // A tag group is not assumed to hold a CIDR group's members: tags change at run time.
  t.notOk(shadowed.some((p) => p.message.includes("'not-shadowed'")));
});

t.test('a valid policy with every feature has no problems', async (t) => {
  const text = `version: 1
default: reject
spoofguard: false
${BASE_WORKLOADS}groups:
  web: { tags: { anyOf: [web] } }
  web-db: { tags: { allOf: [web, db] } }
  named: { workloads: [db-1] }
  nets: { cidrs: [10.0.0.0/8, "fd00::/16"] }
  all: { groups: [web, named, nets] }
services:
  https: tcp/443
  mixed: [udp/53, { proto: tcp, ports: "8000-8100", sourcePorts: 1024-65535 }, icmp/3/4, icmpv6/echo-request, ip/gre, ether/0x88cc]
sections:
  - name: one
    comment: first
    rules:
      - { id: r1, from: [web, 10.9.0.0/16], to: all, services: [https, tcp/22], action: allow, log: true, stateless: false, comment: hi }
      - { id: r2, from: any, to: any, services: [mixed], action: drop, disabled: true }
      - { id: r3, from: any, to: any, services: [ether/lldp], action: allow, appliedTo: [web], stateless: true }
  - name: empty
`;
  const { policy, problems } = policyParse(text, 'ok.yaml');
  t.same(problems, []);
  t.ok(policy);
  t.equal(policy!.default, 'reject');
  t.equal(policy!.spoofguard, false);
  // Where each rule stands (kept beside the rules, by order): its path, and with a located parse its line and column.
  t.same([0, 1, 2].map((o) => rulePlace(policy!, o).path), ['sections[0].rules[0]', 'sections[0].rules[1]', 'sections[0].rules[2]']);
  t.throws(() => rulePlace(policy!, 3), RangeError, 'no rule of order 3');
  const located = policyParse(text, 'ok.yaml', { located: true }).policy!;
  const lines = text.split('\n');
  t.same([0, 1, 2].map((o) => { const { line, column } = rulePlace(located, o); return [line, column]; }),
    ['r1', 'r2', 'r3'].map((id) => { const i = lines.findIndex((l) => l.includes(`- { id: ${id},`)); return [i + 1, lines[i].indexOf('{') + 1]; }));
});

t.test('silent no-ops get a located warning (the policy stays valid)', async (t) => {
  const text = `workloads:
  a: { nic: twv-a, mac: "02:00:00:00:00:0a", ips: [10.1.0.1] }
groups:
  spaced: { tags: ["web "] }
  nobody: { tags: [db] }
  v6net: { cidrs: ["fd00::/16"] }
  v4net: { cidrs: [10.0.0.0/8] }
  just-a: { workloads: [a] }
sections:
  - name: s
    rules:
      - { id: scoped, from: any, to: any, services: [tcp/22], action: drop, appliedTo: [nobody] }
      - { id: six-to-four, from: v6net, to: v4net, action: allow }
      - { id: ping6-on-v4, from: v4net, to: 10.2.0.0/16, services: [icmpv6/echo-request], action: allow }
      - { id: fine, from: v6net, to: just-a, action: allow }
`;
  const { policy, problems } = policyParse(text, 'noop.yaml');
  t.ok(policy, 'still valid');
  const w = (code: string) => problems.filter((p) => p.code === code).map((p) => `${p.line}:${p.column} ${p.path}`);
  t.same(w('impossible-tag'), ['4:20 groups.spaced.tags[0]'], 'a tag no workload can carry');
  t.same(w('applied-to-nobody'), ['12:89 sections[0].rules[0].appliedTo[0]'], 'appliedTo a group with no workloads');
  t.same(w('families-never-meet'), ['13:9 sections[0].rules[1]', '14:9 sections[0].rules[2]'], 'families that cannot meet: IPv6 from, IPv4 to; IPv4 addresses with icmpv6');
  t.match(problems.find((p) => p.code === 'families-never-meet')!.message, /from holds IPv6 addresses, to holds IPv4/);
  t.notOk(problems.some((p) => p.path === 'sections[0].rules[3]'), "a workload's link-local address meets an IPv6 CIDR");
});

t.test('IPv6 addresses in every RFC 4291 text form; zone indexes refused', async (t) => {
  const cases: Array<[string, string | null]> = [
    ['64:ff9b::10.0.0.1', '64:ff9b::a00:1/128'],
    ['::ffff:10.0.0.1', '::ffff:a00:1/128'],
    ['1:2:3:4:5:6:1.2.3.4', '1:2:3:4:5:6:102:304/128'],
    ['FD00:0:0::1', 'fd00::1/128'],
    ['2001:DB8::/32', '2001:db8::/32'],
    ['64:ff9b::10.0.0.1/96', '64:ff9b::/96'],
    ['fe80::1%eth0', null],
    ['::ffff:1.2.3', null],
    ['1::2::3', null],
    ['1:2:3:4:5:6:7:1.2.3.4', null],
    ['fd00::1/129', null],
  ];
  for (const [text, want] of cases) t.equal(parsePrefix(text)?.text ?? null, want, text);
  t.same(parsePrefix('64:ff9b::10.0.0.1')!.words, [0x0064ff9b, 0, 0, 0x0a000001], 'the top 96 bits are kept');
  const { problems } = policyParse('workloads:\n  a: { nic: twv-a, mac: "02:00:00:00:00:0a", ips: ["fe80::1%eth0"] }\nsections: []\n', 'zone.yaml');
  t.match(problems, [{ severity: 'error', line: 2, path: 'workloads.a.ips[0]' }], 'a zone index is a located error');
});

t.test('a side or service list written the same in two rules is read once, and a wrong one is reported at each rule', async (t) => {
  const text = `workloads:
  a: { nic: twv-a, mac: "02:00:00:00:00:0a", ips: [10.1.0.1], tags: [web] }
groups:
  web: { tags: [web] }
sections:
  - name: s
    rules:
      - { id: r1, from: [web, 10.9.0.0/16], to: any, services: [tcp/443], action: allow }
      - { id: r2, from: [web, 10.9.0.0/16], to: any, services: [tcp/443], action: drop }
      - { id: r3, from: [10.9.0.0/16, web], to: web, services: tcp/443, action: drop }
`;
  const { policy } = policyParse(text, 'same.yaml', { shadows: false });
  const [r1, r2, r3] = policy!.sections[0].rules;
  t.equal(r2.from, r1.from, 'the same side, one array');
  t.equal(r2.services, r1.services, 'the same services, one array');
  t.not(r3.from, r1.from, 'written otherwise (another order), its own');
  t.not(r3.services, r1.services, 'a single service instead of a list: its own');
  t.same(r3.services, r1.services, 'though it says the same');
  // Unknown group 'nope' in the same side twice: reported at both rules, each at its own line.
  const bad = `groups:
  web: { tags: [web] }
sections:
  - name: s
    rules:
      - { id: r1, from: [nope], to: any, action: allow }
      - { id: r2, from: [nope], to: any, action: allow }
`;
  const { problems } = policyParse(bad, 'bad.yaml', { located: true });
  t.same(problems.filter((p) => p.code === 'unknown-group').map((p) => [p.line, p.path]), [[6, 'sections[0].rules[0].from[0]'], [7, 'sections[0].rules[1].from[0]']], 'both reported, each where it stands');
});
