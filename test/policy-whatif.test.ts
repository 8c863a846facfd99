// What-if replay: a flow log recorded by the real data plane (in-memory
// ports) is replayed against a candidate policy; the answer lists exactly the
// connections whose verdict the candidate changes, grouped by the rule that
// would decide them, and the recorded verdicts are what the tracer says of
// the policy in force (so the replay starts from the truth). Also through
// the CLI, and what cannot be replayed is listed, not guessed.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MemLab } from './memlab.js';
import { frameBuild } from '../src/packet/build.js';
import { TCP_SYN } from '../src/packet/parse.js';
import { FlowLogWriter } from '../src/control/flowLogWriter.js';
import { connectionsFromFlowLog, whatIf } from '../src/control/whatif.js';
import { parsePacketSpec, policyTrace } from '../src/control/trace.js';
import { policyCompile } from '../src/policy/compile.js';
import { policyParse } from '../src/policy/load.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const MAC = { a: '02:70:00:00:00:01', b: '02:70:00:00:00:02', c: '02:70:00:00:00:03' };
const policy = (rules: string) => `
default: drop
workloads:
  a: { nic: twj-a, mac: "${MAC.a}", ips: [10.70.0.1], tags: [web] }
  b: { nic: twj-b, mac: "${MAC.b}", ips: [10.70.0.2], tags: [app] }
  c: { nic: twj-c, mac: "${MAC.c}", ips: [10.70.0.3], tags: [db] }
groups:
  web: { tags: [web] }
  app: { tags: [app] }
  db: { tags: [db] }
sections:
  - name: s
    rules:
${rules}`;
const ENFORCED = policy(`      - { id: web-to-app, from: web, to: app, services: [tcp/80], action: allow, log: true }
      - { id: app-to-db, from: app, to: db, services: [tcp/5432], action: allow, log: true }
`);
const CANDIDATE = policy(`      - { id: web-to-app, from: web, to: app, services: [tcp/80, tcp/22], action: allow }
      - { id: no-app-db, from: app, to: db, action: drop }
`);

t.test('a recorded flow log replayed against a candidate', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-whatif-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lab = new MemLab(ENFORCED, { uplink: null, dataplane: { flowLog: { rate: 1000, burst: 1000 } } });
  t.teardown(() => lab.stop());
  const logFile = join(dir, 'flows.log');
  const writer = new FlowLogWriter(lab.dp, lab.dp.ct.flowLog!, logFile, false);
  const syn = (from: 'a' | 'b', to: 'b' | 'c', src: string, dst: string, sport: number, dport: number) =>
    lab.send(`twj-${from}`, frameBuild({ family: 4, proto: 6, srcMac: MAC[from], dstMac: MAC[to], src, dst, sport, dport, flags: TCP_SYN })).outcome;
  t.same([
    syn('a', 'b', '10.70.0.1', '10.70.0.2', 40000, 80),
    syn('a', 'b', '10.70.0.1', '10.70.0.2', 40001, 80),
    syn('b', 'c', '10.70.0.2', '10.70.0.3', 40002, 5432),
    syn('a', 'c', '10.70.0.1', '10.70.0.3', 40003, 5432),
    syn('a', 'b', '10.70.0.1', '10.70.0.2', 40004, 22),
  ], ['forward', 'forward', 'forward', 'policy', 'policy'], 'the traffic, as the enforced policy decided it');
  writer.stop();
  const text = readFileSync(logFile, 'utf8') + 'not json\n{"event":"decision","proto":"icmp","src":"10.70.0.1","dst":"10.70.0.2"}\n';

  const skipped: Array<{ what: string; why: string }> = [];
  const recorded = connectionsFromFlowLog(text, skipped);
  t.equal(recorded.length, 5, 'five decisions in the log');
  // The recorded verdicts are the tracer's on the policy in force: the replay starts from the truth.
  const enforced = policyCompile(policyParse(ENFORCED, 'enforced', { shadows: false }).policy!);
  for (const c of recorded) {
    const tr = policyTrace(enforced, parsePacketSpec(`tcp ${c.src}:${c.sport} -> ${c.dst}:${c.dport}`), { from: c.from ?? undefined, to: c.to ?? undefined });
    t.equal(tr.verdict, c.verdict, `recorded ${c.src}:${c.sport} -> ${c.dst}:${c.dport} ${c.verdict}, as the tracer says`);
  }
  const candidate = policyCompile(policyParse(CANDIDATE, 'candidate', { shadows: false }).policy!);
  const r = whatIf(candidate, recorded, skipped);
  t.equal(r.replayed, 5, 'every recorded connection replayed');
  t.same(r.changed.map((c) => `${c.src}:${c.sport}->${c.dst}:${c.dport} ${c.verdict}->${c.candidate.verdict} by ${c.candidate.rule}`).sort(), [
    '10.70.0.1:40004->10.70.0.2:22 drop->allow by web-to-app',
    '10.70.0.2:40002->10.70.0.3:5432 allow->drop by no-app-db',
  ], 'exactly the two connections the candidate changes, with the rule that would decide each');
  t.same(r.byRule.map((g) => [g.rule, g.verdict, g.connections]).sort(), [['no-app-db', 'drop', 1], ['web-to-app', 'allow', 1]], 'grouped by rule');
  t.same(skipped.map((s) => s.why.split(':')[0]), ['not JSON', 'icmp'], 'what cannot be replayed is listed');

  // The same through the CLI, offline.
  const candFile = join(dir, 'candidate.yaml');
  writeFileSync(candFile, CANDIDATE);
  writeFileSync(logFile, text);
  const cli = spawnSync(process.execPath, [join(root, 'bin/tapwall.js'), 'policy', 'whatif', candFile, '--flows', logFile, '--json'], { encoding: 'utf8' });
  t.equal(cli.status, 0, cli.stderr);
  const j = JSON.parse(cli.stdout) as { replayed: number; changed: unknown[] };
  t.same([j.replayed, j.changed.length], [5, 2], 'the CLI gives the same answer');
});
