// A staged policy with real traffic between namespaces (`tapwall run` on TAPs
// it creates, VMs in network namespaces): staged, it would deny a service the
// enforced policy allows; new connections keep being allowed while the
// disagreement shows in `policy diff`, in Prometheus and in the flow log;
// promoting it makes it real (new connections refused after); a rollback
// restores the previous verdicts. A staged policy that fails validation gets
// a located error and changes nothing. Namespaces and links are removed at
// the end, also on failure.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, SERVERS, TCP_CONNECT, TCP_STREAM, lineReader } from '../tools/lab.js';
import { apiCall } from '../src/cli/client.js';
import { tieredPolicy, until } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'bin/tapwall.js');
const ENFORCED = tieredPolicy('twi', 81);
// The candidate: web-to-app gone, so web -> app:8080 falls to the default (drop).
const STAGED = ENFORCED.replace(/ {6}- \{ id: web-to-app[^\n]*\n/, '');
const HOSTS = [
  { ns: 'twi-web', nic: 'twi-web1', mac: '02:81:00:00:01:11', v4: '10.81.1.11/16' },
  { ns: 'twi-app', nic: 'twi-app1', mac: '02:81:00:00:02:21', v4: '10.81.2.21/16' },
];

t.test('stage, see the disagreement, promote, roll back', async (t) => {
  const lab = new Lab();
  let daemon: ChildProcess | null = null;
  t.teardown(() => {
    if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
    lab.cleanup();
  });
  const dir = mkdtempSync(join(tmpdir(), 'tw-stg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const policyFile = join(dir, 'policy.yaml'), socket = join(dir, 'api.sock'), flowLog = join(dir, 'flows.jsonl');
  writeFileSync(policyFile, ENFORCED);
  writeFileSync(join(dir, 'staged.yaml'), STAGED);
  writeFileSync(join(dir, 'broken.yaml'), STAGED.replace('action: drop, log: true }', 'action: dorp, log: true }'));
  daemon = spawn(process.execPath, [cli, 'run', '--config', policyFile, '--state-dir', join(dir, 'state'), '--api-socket', socket,
    '--flow-log', flowLog, '--metrics', '127.0.0.1:0', '--no-flow-state'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const ready = JSON.parse(await lineReader(daemon, 15_000)()) as { metrics: string };
  for (const h of HOSTS) lab.host(h.ns, h.nic, h.mac, [h.v4], [], { ipv6: false });
  const server = lab.spawnIn('twi-app', SERVERS, ['app', '8080']);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the echo server did not start')), 10_000);
    server.stdout!.on('data', (d) => { if (String(d).includes('ready')) { clearTimeout(timer); resolve(); } });
  });
  const api = { socket };
  const connect = (ms = 2000) => lab.runIn('twi-web', TCP_CONNECT, ['10.81.2.21', '8080', String(ms)]);
  const tw = (...args: string[]) => spawnSync(process.execPath, [cli, ...args, '--api-socket', socket], { encoding: 'utf8' });
  const staged = async () => (await apiCall<{ stagedRevision: number; text: string | null; disagreements: Array<Record<string, any>>; examples: Array<Record<string, any>> }>(api, 'GET', '/v1/policy/staged')).body;

  t.equal(connect(), 'connected', 'web -> app:8080 is allowed by the enforced policy');

  // A long connection carrying data throughout (opened before anything is staged).
  const stream = lab.spawnIn('twi-web', TCP_STREAM, ['10.81.2.21', '8080', '20', '60000']);
  let echoes = 0;
  stream.stdout!.on('data', (d) => { echoes += (String(d).match(/^echo /gm) ?? []).length; });
  await until('the stream to carry data', () => echoes > 5, 10_000);

  // Bad input first: refused with a located error, nothing staged.
  const bad = tw('policy', 'stage', join(dir, 'broken.yaml'));
  t.not(bad.status, 0, 'a staged policy that fails validation is refused');
  t.match(bad.stderr, /\(request\):\d+:\d+|line \d+|sections\[0\]/, 'with where the error is');
  t.equal((await staged()).text, null, 'and nothing is staged');

  const st = tw('policy', 'stage', join(dir, 'staged.yaml'), '--by', 'alice');
  t.equal(st.status, 0, st.stderr);
  for (let i = 0; i < 3; i++) t.equal(connect(), 'connected', `new connection ${i + 1} while staged: still allowed (staged is never enforced)`);
  const view = await staged();
  const dflt = view.disagreements.find((d) => d.rule === 'default');
  t.ok(dflt && dflt['would-deny'] >= 3, `the staged default would deny them: ${JSON.stringify(view.disagreements)}`);
  t.ok(view.examples.some((e) => e.kind === 'would-deny' && e.dport === 8080 && e.enforced.rule === 'web-to-app' && e.staged.rule === 'default'), 'an example names both rules');
  const diff = tw('policy', 'diff');
  t.equal(diff.status, 0, diff.stderr);
  t.match(diff.stdout, /default\s+drop\s+[3-9]/, 'policy diff shows the table');
  const metrics = await (await fetch(ready.metrics)).text();
  t.match(metrics, /tapwall_staged_disagreements_total\{section="",rule="default",kind="would-deny"\} [3-9]/, 'and Prometheus has the counter');
  await until('the flow log to have the staged lines', () => readFileSync(flowLog, 'utf8').includes('"event":"staged"'), 5000);
  const line = readFileSync(flowLog, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>).find((l) => l.event === 'staged')!;
  t.match(line, { dport: 8080, rule: 'web-to-app', verdict: 'allow', staged: { kind: 'would-deny', rule: 'default' } }, 'a flow-log line marked staged, with both rules');
  const before = echoes;
  await until('the stream to go on while staged', () => echoes > before + 5, 10_000);

  // Promote: the staged policy becomes the enforced one; new connections are refused after.
  const historyBefore = (await apiCall<{ entries: Array<{ id: number }> }>(api, 'GET', '/v1/policy/history')).body.entries;
  const pr = tw('policy', 'promote', '--by', 'bob');
  t.equal(pr.status, 0, pr.stderr);
  t.equal(connect(1500), 'timeout', 'after promote, web -> app:8080 is dropped');
  t.equal((await staged()).text, null, 'nothing is staged any more');
  t.equal((await apiCall<{ text: string }>(api, 'GET', '/v1/policy')).body.text, STAGED, 'the enforced policy is the staged text');

  // What-if on the flow log recorded meanwhile: the old policy would allow again what the promoted one drops.
  writeFileSync(join(dir, 'enforced.yaml'), ENFORCED);
  await until('the flow log to have the denial', () => readFileSync(flowLog, 'utf8').split('\n').some((l) => l.includes('"event":"decision"') && l.includes('"dport":8080')), 5000);
  const wi = spawnSync(process.execPath, [cli, 'policy', 'whatif', join(dir, 'enforced.yaml'), '--flows', flowLog, '--json'], { encoding: 'utf8' });
  t.equal(wi.status, 0, wi.stderr);
  const changed = (JSON.parse(wi.stdout) as { changed: Array<{ src: string; dst: string; dport: number; verdict: string; candidate: { verdict: string; rule: string } }> }).changed;
  t.ok(changed.length >= 1 && changed.every((c) => c.src === '10.81.1.11' && c.dst === '10.81.2.21' && c.dport === 8080 && c.verdict === 'drop' && c.candidate.verdict === 'allow' && c.candidate.rule === 'web-to-app'),
    `what-if lists the dropped web -> app:8080 connections as allowed by web-to-app, and nothing else (${changed.length})`);

  // Rollback restores the previous verdicts.
  const rb = tw('policy', 'rollback', String(historyBefore[0].id), '--by', 'carol');
  t.equal(rb.status, 0, rb.stderr);
  t.equal(connect(), 'connected', 'after the rollback, web -> app:8080 is allowed again');
  // Rule analytics: web-to-app was hit (and removed and restored since: its counts were kept); app-to-db and the quarantine rules never.
  const unused = tw('rules', '--unused', '1h', '--json');
  t.equal(unused.status, 0, unused.stderr);
  t.same((JSON.parse(unused.stdout) as { rules: Array<{ id: string }> }).rules.map((r) => r.id).sort(), ['app-to-db', 'quarantine-in', 'quarantine-out'], 'rules --unused lists exactly the rules no traffic hit');
  const audit = readFileSync(join(dir, 'state', 'audit.jsonl'), 'utf8');
  t.match(audit, /"action":"policy.staged","by":"alice/, 'staging is audited');
  t.match(audit, /bob .*promote staged #/, 'so is the promotion');
  stream.kill('SIGKILL');
});
