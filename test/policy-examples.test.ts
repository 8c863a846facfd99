// Golden tables: allowed and dropped packets through each example policy,
// traced with the same compiled tables the data plane uses.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { policyLoad } from '../src/policy/load.js';
import { policyCompile } from '../src/policy/compile.js';
import { parsePacketSpec, policyTrace, TraceSpecError } from '../src/control/trace.js';

const example = (name: string) => fileURLToPath(new URL(`../examples/${name}`, import.meta.url));

type Row = [packet: string, verdict: 'allow' | 'drop' | 'reject', decidedBy: string, opts?: { from?: string; to?: string }];

function table(t: Tap.Test, file: string, rows: Row[], tags?: Record<string, string[]>): void {
  const { policy, warnings } = policyLoad(example(file));
  t.same(warnings, [], `${file} loads without warnings`);
  for (const [w, extra] of Object.entries(tags ?? {})) policy.workloads.get(w)!.tags.push(...extra);
  const compiled = policyCompile(policy);
  for (const [packet, verdict, decidedBy, opts] of rows) {
    const r = policyTrace(compiled, parsePacketSpec(packet), opts);
    const last = r.steps[r.steps.length - 1];
    const by = last.point === 'spoofguard' ? 'spoofguard' : last.rule ? last.rule.id : 'default';
    t.same({ verdict: r.verdict, by }, { verdict, by: decidedBy }, `${packet}${opts?.from ? ` from ${opts.from}` : ''}`);
  }
}

declare namespace Tap { type Test = typeof t; }

t.test('three-tier', async (t) => {
  table(t, 'three-tier.yaml', [
    ['tcp 203.0.113.9:50000 -> 10.0.1.11:443', 'allow', 'internet-to-web'],
    ['tcp 203.0.113.9:50000 -> 10.0.1.12:80', 'allow', 'internet-to-web'],
    ['tcp 203.0.113.9:50000 -> 10.0.1.11:22', 'drop', 'default'],
    ['tcp 203.0.113.9:50000 -> 10.0.3.31:5432', 'drop', 'default'],
    ['tcp 10.0.1.11:40000 -> 10.0.2.21:8080', 'allow', 'web-to-app'],
    ['tcp 10.0.1.11:40000 -> 10.0.2.21:9090', 'drop', 'default'],
    ['tcp 10.0.2.21:40000 -> 10.0.3.31:5432', 'allow', 'app-to-db'],
    ['tcp 10.0.1.11:40000 -> 10.0.3.31:5432', 'reject', 'web-to-db-reject'],
    ['udp 10.0.1.12:40000 -> 10.0.3.31:53', 'reject', 'web-to-db-reject'],
    ['tcp 10.0.1.11:40000 -> 10.0.1.12:80', 'drop', 'no-lateral-web'], // first in its section: internet-to-web's from: any would allow it
    ['tcp 10.0.1.11:40000 -> 10.0.1.12:8443', 'drop', 'no-lateral-web'],
    ['tcp 10.0.9.5:40000 -> 10.0.3.31:22', 'allow', 'admin-ssh'],
    ['icmp 10.0.9.5 -> 10.0.2.21 echo-request', 'allow', 'admin-ssh'],
    ['icmp 10.0.9.5 -> 10.0.2.21 echo-reply', 'drop', 'default'],
    ['tcp 10.0.1.11:40000 -> 10.0.9.5:22', 'drop', 'default'],
    ['tcp 10.0.3.31:40000 -> 10.0.2.21:8080', 'drop', 'default'],
    // SpoofGuard: web-1 sending from db-1's address.
    ['tcp 10.0.3.31:40000 -> 10.0.2.21:8080', 'drop', 'spoofguard', { from: 'web-1' }],
    ['udp 0.0.0.0:68 -> 255.255.255.255:67', 'drop', 'default', { from: 'web-1' }],
  ]);
});

t.test('three-tier with web-1 quarantined', async (t) => {
  table(t, 'three-tier.yaml', [
    ['tcp 203.0.113.9:50000 -> 10.0.1.11:443', 'drop', 'quarantine-in'],
    ['tcp 203.0.113.9:50000 -> 10.0.1.12:443', 'allow', 'internet-to-web'],
    ['tcp 10.0.1.11:40000 -> 10.0.2.21:8080', 'drop', 'quarantine-out'],
    ['tcp 10.0.1.11:40000 -> 10.0.99.10:443', 'allow', 'quarantine-remediation'],
    ['tcp 10.0.1.11:40000 -> 10.0.99.10:80', 'drop', 'quarantine-out'],
    ['tcp 10.0.9.5:40000 -> 10.0.1.11:22', 'drop', 'quarantine-in'],
    ['tcp 10.0.1.12:40000 -> 10.0.2.21:8080', 'allow', 'web-to-app'],
  ], { 'web-1': ['quarantine'] });
});

t.test('dual-stack (IPv6)', async (t) => {
  table(t, 'dual-stack.json', [
    ['tcp [2001:db8::5]:40000 -> [fd00:6::11]:443', 'allow', 'clients-to-front'],
    ['tcp [2001:db9::5]:40000 -> [fd00:6::11]:443', 'drop', 'default'],
    ['tcp 198.51.100.1:40000 -> 10.6.0.11:443', 'drop', 'default'],
    ['tcp [fd00:6::11]:40000 -> [fd00:6::21]:8443', 'allow', 'front-to-api'],
    ['tcp 10.6.0.11:40000 -> 10.6.0.21:8443', 'allow', 'front-to-api'],
    ['tcp [fd00:6::21]:40000 -> [fd00:6::31]:6379', 'allow', 'api-to-cache'],
    ['tcp [fd00:6::11]:40000 -> [fd00:6::31]:6379', 'reject', 'front-to-cache'],
    ['udp [fd00:6::11]:40000 -> [fd00:6::31]:53', 'reject', 'front-to-cache'],
    ['icmpv6 fd00:99::7 -> fd00:6::31 echo-request', 'allow', 'monitoring-ping'],
    ['icmpv6 fd00:98::7 -> fd00:6::31 echo-request', 'drop', 'default'],
    ['icmp 10.99.0.3 -> 10.6.0.21 echo-request', 'allow', 'monitoring-ping'],
    ['icmp 10.99.0.3 -> 10.6.0.21 3/4', 'drop', 'default'],
    // The link-local address derived from front-1's MAC passes SpoofGuard and is in front-1's groups.
    ['tcp [fe80::ff:fe00:601]:40000 -> [fd00:6::21]:8443', 'allow', 'front-to-api', { from: 'front-1' }], // its link-local address is front-1's everywhere
    ['tcp [fe80::ff:fe00:602]:40000 -> [fd00:6::21]:8443', 'drop', 'spoofguard', { from: 'front-1' }],
  ]);
});

t.test('packet descriptions: errors say what was expected', async (t) => {
  const bad: Array<[string, RegExp]> = [
    ['tcp 10.0.0.1 -> 10.0.0.2', /needs a port/],
    ['tcp 10.0.0.1:1 -> fd00::2:5', /not an address|different IP families/],
    ['icmp fd00::1 -> fd00::2', /use icmpv6/],
    ['gre 10.0.0.1 -> 10.0.0.2', /expected 'PROTO/],
    ['tcp 10.0.0.1:70000 -> 10.0.0.2:80', /out of range/],
    ['icmp 10.0.0.1 -> 10.0.0.2 echo', /unknown ICMP type/],
  ];
  for (const [spec, re] of bad) t.throws(() => parsePacketSpec(spec), re, spec);
  t.match(parsePacketSpec('tcp [fd00::1]:5 -> [fd00::2]:443'), { family: 6, proto: 6, sport: 5, dport: 443 });
  t.match(parsePacketSpec('ip/47 10.0.0.1 -> 10.0.0.2'), { family: 4, proto: 47, sport: 0, dport: 0 });
  t.match(parsePacketSpec('icmp 10.0.0.1 -> 10.0.0.2 type 3 code 4'), { proto: 1, sport: 3, dport: 4 });
  const { policy } = policyLoad(example('three-tier.yaml'));
  const c = policyCompile(policy);
  t.throws(() => policyTrace(c, parsePacketSpec('tcp 192.0.2.1:1 -> 192.0.2.2:2')), { code: 'TRACE_SPEC', message: /crosses no vNIC/ }, 'a packet that crosses no vNIC is an error');
  t.throws(() => policyTrace(c, parsePacketSpec('tcp 10.0.1.11:1 -> 10.0.2.21:2'), { from: 'web-9' }), /no workload named 'web-9'/);
});
