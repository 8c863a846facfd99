// `tapwall run --user nobody`: started as root, the daemon opens its ports,
// then becomes the user with CAP_NET_RAW alone (attach mode) in its
// effective, permitted and bounding sets and no_new_privs. It keeps
// forwarding, attaches a vNIC the policy adds later (which needs that
// capability), and writes its state as that user. Veths into namespaces,
// removed at the end.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, SERVERS, TCP_CONNECT, lineReader } from '../tools/lab.js';
import { apiCall } from '../src/cli/client.js';
import { until } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const vm = (n: string, i: number) => `  ${n}: { nic: twv-${n}, mac: "02:85:00:00:00:0${i}", ips: [10.85.0.${i}] }`;
const policy = (names: string[]) => `default: drop
workloads:
${names.map((n, i) => vm(n, i + 1)).join('\n')}
sections:
  - name: s
    rules:
      - { id: to-b, from: 10.85.0.0/24, to: 10.85.0.2, services: [tcp/8080], action: allow }
`;

const lab = new Lab();
const dir = mkdtempSync(join(tmpdir(), 'tw-priv-'));
let daemon: ChildProcess | null = null;
t.teardown(() => {
  if (daemon && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
  lab.cleanup();
  rmSync(dir, { recursive: true, force: true });
});
// The policy file stays readable by the user: the daemon reads it again when it changes.
chmodSync(dir, 0o755);
const config = join(dir, 'policy.yaml');
writeFileSync(config, policy(['a', 'b']), { mode: 0o644 });
const state = join(dir, 'state');
const socket = join(dir, 'api.sock');
const NOBODY = 65534;

/** A field of /proc/PID[/task/TID]/status. */
const procStatus = (path: string, field: string) => (new RegExp(`^${field}:[ \\t]*(.*)$`, 'm').exec(readFileSync(`${path}/status`, 'utf8')) ?? [])[1] ?? '';

t.test('started as root, run as nobody with CAP_NET_RAW only', async (t) => {
  lab.vethHost('twv-na', 'twv-a', 'twv-pa', '02:85:00:00:00:01', ['10.85.0.1/24']);
  lab.vethHost('twv-nb', 'twv-b', 'twv-pb', '02:85:00:00:00:02', ['10.85.0.2/24']);
  const server = lab.spawnIn('twv-nb', SERVERS, ['b', '8080']);
  const listening = new Promise<void>((resolve) => server.stdout!.on('data', (d) => { if (String(d).includes('ready')) resolve(); }));
  // Without the test runner's NODE_OPTIONS (its hook would write its own file at the daemon's exit, which
  // nobody may not); the runner adds them to every child's environment, hence the shell.
  daemon = spawn('sh', ['-c', 'unset NODE_OPTIONS; exec "$@"', 'sh', process.execPath, join(root, 'bin/tapwall.js'), 'run', '--config', config, '--mode', 'attach', '--state-dir', state,
    '--api-socket', socket, '--no-metrics', '--user', 'nobody'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  daemon.stderr!.on('data', (d) => { stderr += String(d); });
  const ready = JSON.parse(await lineReader(daemon, 15_000)()) as { ready: boolean };
  t.ok(ready.ready, 'ready');
  const proc = `/proc/${daemon.pid}`;
  t.equal(procStatus(proc, 'Uid'), `${NOBODY}\t${NOBODY}\t${NOBODY}\t${NOBODY}`, 'real, effective, saved and file uid are nobody');
  t.equal(procStatus(proc, 'Groups'), '', 'no supplementary groups');
  t.equal(procStatus(proc, 'CapEff'), '0000000000002000', 'the main thread has CAP_NET_RAW, nothing else');
  t.equal(procStatus(proc, 'CapPrm'), '0000000000002000', 'permitted: the same');
  t.equal(procStatus(proc, 'CapBnd'), '0000000000002000', 'and nothing else can ever come back (bounding set)');
  t.equal(procStatus(proc, 'NoNewPrivs'), '1', 'no_new_privs');
  const others = readdirSync(`${proc}/task`).filter((id) => id !== String(daemon!.pid)).map((id) => procStatus(`${proc}/task/${id}`, 'CapEff'));
  t.ok(others.length > 0 && others.every((c) => c === '0000000000000000'), `the other ${others.length} threads have no capability`);

  await listening;
  t.equal(lab.runIn('twv-na', TCP_CONNECT, ['10.85.0.2', '8080', '3000']), 'connected', 'a -> b is forwarded');

  // A workload added to the policy: its vNIC is opened by the unprivileged daemon.
  lab.vethHost('twv-nc', 'twv-c', 'twv-pc', '02:85:00:00:00:03', ['10.85.0.3/24']);
  writeFileSync(config, policy(['a', 'b', 'c']));
  await until('twv-c attached', async () => (await apiCall<{ ports: Array<{ name: string; up: boolean }> }>({ socket }, 'GET', '/v1/status')).body.ports.some((p) => p.name === 'twv-c' && p.up), 10_000);
  t.equal(lab.runIn('twv-nc', TCP_CONNECT, ['10.85.0.2', '8080', '3000']), 'connected', 'c -> b through the vNIC opened after the drop');

  const tag = await apiCall({ socket }, 'POST', '/v1/workloads/a/tags', { add: ['suspect'], reason: 'privileges test' });
  t.equal(tag.status, 200, 'a tag is stored');
  t.equal(statSync(join(state, 'tags.json')).uid, NOBODY, 'by the user, in its state folder');
  t.equal(statSync(join(state, 'audit.jsonl')).uid, NOBODY, 'and audited');

  const exited = new Promise<number | null>((resolve) => daemon!.once('exit', (code) => resolve(code)));
  daemon.kill('SIGTERM');
  t.equal(await exited, 0, 'it stops cleanly');
  t.notMatch(stderr, /internal error|EACCES|EPERM/, 'with no permission error on the way');
});
