// The command line as a user runs it: exit codes, output, --help for every command.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readClassbenchRules, readClassbenchTrace, CLASSBENCH_DIMS } from '../tools/classbench.js';
import { trieBuild, linearLookup } from '../src/classify/ruleTrie.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = join(root, 'bin/tapwall.js');

function tapwall(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

t.test('check: valid examples exit 0 with a summary', async (t) => {
  for (const f of ['examples/three-tier.yaml', 'examples/dual-stack.json']) {
    const r = tapwall('check', f);
    t.equal(r.code, 0, `${f} is valid`);
    t.match(r.out, /valid: \d+ workloads, \d+ groups/);
  }
});

t.test('check: an invalid policy exits 2 and lists every problem with its location', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'bad.yaml');
  writeFileSync(file, `default: deny\nsections:\n  - name: a\n    rules:\n      - { id: r1, from: nope, to: any, action: allow }\n`);
  const r = tapwall('check', file);
  t.equal(r.code, 2);
  t.match(r.out, `${file}:1:10: error: default: expected one of allow, drop, reject`);
  t.match(r.out, `${file}:5:25: error: sections[0].rules[0].from: no group named 'nope'`);
  const j = tapwall('check', file, '--json');
  t.equal(j.code, 2);
  const parsed = JSON.parse(j.out);
  t.equal(parsed.valid, false);
  t.equal(parsed.problems.length, 2);
  const missing = tapwall('check', join(dir, 'absent.yaml'));
  t.equal(missing.code, 2, 'a missing file is bad input, not a crash');
  t.match(missing.err, /ENOENT|no such file/);
});

t.test('trace: text and JSON', async (t) => {
  const r = tapwall('trace', 'examples/three-tier.yaml', 'tcp 10.0.1.11:40000 -> 10.0.3.31:5432');
  t.equal(r.code, 0);
  t.match(r.out, /egress at web-1 \(tw-web1\): REJECT: rule web-to-db-reject in section application/);
  t.match(r.out, /verdict\s+REJECT/);
  const j = tapwall('trace', 'examples/three-tier.yaml', '--json', '--from', 'app-1', 'tcp 10.0.2.21:40000 -> 10.0.3.31:5432');
  t.equal(j.code, 0);
  const parsed = JSON.parse(j.out);
  t.equal(parsed.verdict, 'allow');
  t.same(parsed.steps.map((s: { point: string; verdict: string }) => `${s.point}:${s.verdict}`), ['spoofguard:allow', 'egress:allow', 'ingress:allow']);
  const bad = tapwall('trace', 'examples/three-tier.yaml', 'tcp 10.0.1.11 -> 10.0.3.31');
  t.equal(bad.code, 2);
  t.match(bad.err, /needs a port/);
});

t.test('classbench match prints the linear-scan answer for every trace line', async (t) => {
  const rulesPath = join(root, 'data/classbench/1k/fw1_seed_1.rules');
  const tracePath = join(root, 'data/classbench/1k/fw1_seed_1.trace');
  const r = tapwall('classbench', 'match', rulesPath, tracePath);
  t.equal(r.code, 0);
  const rules = readClassbenchRules(rulesPath), trace = readClassbenchTrace(tracePath);
  const trie = trieBuild(CLASSBENCH_DIMS, rules.count, rules.lo, rules.hi);
  const want = Array.from({ length: trace.count }, (_, i) => String(linearLookup(trie, trace.keys, i * CLASSBENCH_DIMS)));
  t.same(r.out.trim().split('\n'), want);
  const dir = mkdtempSync(join(tmpdir(), 'tw-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'bad.rules'), '@1.2.3.4/40 0.0.0.0/0 0 : 65535 0 : 65535 0x06/0xFF 0x0000/0x0000\n');
  const bad = tapwall('classbench', 'match', join(dir, 'bad.rules'), tracePath);
  t.equal(bad.code, 2);
  t.match(bad.err, /bad\.rules:1: expected a prefix length 0-32/);
});

t.test('bench classify --json reports both rates, the ratio and the machine', async (t) => {
  const r = tapwall('bench', 'classify', 'data/classbench/1k/acl1_seed_1.rules', 'data/classbench/1k/acl1_seed_1.trace', '--json', '--rounds', '1');
  t.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  t.ok(j.trieLookupsPerSec > 0 && j.linearLookupsPerSec > 0, 'both rates measured');
  t.equal(j.speedup, Number((j.trieLookupsPerSec / j.linearLookupsPerSec).toFixed(1)), 'ratio is of the two rates');
  t.equal(j.mismatches, 0);
  t.ok(j.machine.cores > 0 && typeof j.machine.cpu === 'string');
});

t.test('--help describes every command', async (t) => {
  const top = tapwall('--help');
  t.equal(top.code, 0);
  for (const cmd of ['check', 'trace', 'compile', 'classbench', 'bench']) t.match(top.out, new RegExp(`\\n\\s+${cmd}\\b`), `lists ${cmd}`);
  for (const cmd of [['check'], ['trace'], ['compile'], ['classbench', 'match'], ['bench', 'classify']]) {
    const h = tapwall(...cmd, '--help');
    t.equal(h.code, 0);
    t.match(h.out, /^Usage: tapwall /, `${cmd.join(' ')} --help`);
  }
  const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
  t.equal(tapwall('--version').out.trim(), version);
});

t.test('compile --dump shows each pass', async (t) => {
  const g = tapwall('compile', 'examples/three-tier.yaml', '--dump', 'groups');
  t.match(g.out, /^web: members web-1 web-2; addresses 10\.0\.1\.11\/32 10\.0\.1\.12\/32 fe80::ff:fe00:111\/128 fe80::ff:fe00:112\/128$/m, "a group holds its members' addresses, link-local ones included");
  const p = tapwall('compile', 'examples/three-tier.yaml', '--dump', 'points');
  t.match(p.out, /vNIC tw-db1 \(db-1\): 10 rules/);
  t.match(p.out, /IPv4 section application: \d+ address classes over \d+ intervals, \d+ entries/);
  t.match(p.out, /application\/app-to-db allow: @app \[class \d+\] -> @db \[class \d+\] tcp\/5432/);
});

t.test('bench flow --quick --json reports the hit path against its baselines, inserts, memory and GC', async (t) => {
  const r = tapwall('bench', 'flow', '--quick', '--json');
  t.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  t.equal(j.hitPath.length, 2);
  for (const h of j.hitPath) {
    t.ok(h.perSec > 0 && h.mapCachePerSec > 0 && h.uncachedClassifyPerSec > 0 && h.parseOnlyPerSec > 0, `rates measured for ${h.flows} flows`);
    t.equal(h.vsMap, Number((h.perSec / h.mapCachePerSec).toFixed(1)));
  }
  t.equal(j.memory.flows, 1_000_000, 'a million connections were inserted');
  t.match(j.outcomesCheck, /^all \d+ packets of the GC run forwarded$/);
  t.type(j.gcDuringMillionPackets, 'number');
});
