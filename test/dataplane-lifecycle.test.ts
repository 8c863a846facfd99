// Guests come and go: in attach mode a vNIC named in the policy but absent at
// start is reported (status, metrics) and not fatal; when its interface
// appears it is attached; when it vanishes the port goes down; when it comes
// back (a new interface with the same name, as a restarted QEMU guest's TAP
// is) it is attached again, without restarting tapwall. Shown with veths into
// namespaces, removed at the end.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, SERVERS, TCP_CONNECT, lineReader, sh } from '../tools/lab.js';
import { apiCall } from '../src/cli/client.js';
import { untilValue } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const POLICY = `default: drop
workloads:
  a: { nic: twl-a, mac: "02:82:00:00:00:0a", ips: [10.82.0.1] }
  b: { nic: twl-b, mac: "02:82:00:00:00:0b", ips: [10.82.0.2] }
sections:
  - name: s
    rules:
      - { id: a-to-b, from: 10.82.0.1, to: 10.82.0.2, services: [tcp/8080], action: allow }
`;

type Port = { name: string; up: boolean; attaches: number };

t.test('a vNIC that is absent, appears, vanishes and comes back', async (t) => {
  const lab = new Lab();
  let daemon: ChildProcess | null = null;
  t.teardown(() => {
    if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
    lab.cleanup();
  });
  const dir = mkdtempSync(join(tmpdir(), 'tw-life-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'policy.yaml'), POLICY);
  const socket = join(dir, 'api.sock');
  lab.vethHost('twl-na', 'twl-a', 'twl-pa', '02:82:00:00:00:0a', ['10.82.0.1/24']);
  daemon = spawn(process.execPath, [join(root, 'bin/tapwall.js'), 'run', '--config', join(dir, 'policy.yaml'), '--mode', 'attach',
    '--state-dir', join(dir, 'state'), '--api-socket', socket, '--metrics', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  daemon.stderr!.on('data', (d) => { stderr += String(d); });
  const ready = JSON.parse(await lineReader(daemon, 15_000)()) as { ready: boolean; metrics: string };
  t.equal(ready.ready, true, 'tapwall starts although twl-b does not exist');
  const port = async (name: string) => (await apiCall<{ ports: Port[] }>({ socket }, 'GET', '/v1/status')).body.ports.find((p) => p.name === name)!;
  const waitPort = (name: string, want: (p: Port) => boolean) => untilValue(`port ${name}`, () => port(name), want).then(() => true, () => false);
  t.match(await port('twl-b'), { up: false, attaches: 0 }, 'status reports twl-b down');
  t.match(await (await fetch(ready.metrics)).text(), /^tapwall_port_up\{port="twl-b",workload="b"\} 0$/m, 'and so do the metrics');
  t.match(stderr, /twl-a|running/, 'the daemon logged its start');

  let server: ChildProcess | null = null;
  /** The "guest" b: its namespace and veth, and an echo server; resolves once the server says it listens. */
  const bring = (): Promise<void> => {
    lab.vethHost('twl-nb', 'twl-b', 'twl-pb', '02:82:00:00:00:0b', ['10.82.0.2/24']);
    const s = lab.spawnIn('twl-nb', SERVERS, ['b', '8080']);
    server = s;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the echo server did not start')), 10_000);
      s.stdout!.on('data', (d) => { if (String(d).includes('ready')) { clearTimeout(timer); resolve(); } });
    });
  };
  const connect = () => lab.runIn('twl-na', TCP_CONNECT, ['10.82.0.2', '8080', '1500']);

  const listening = bring();
  t.ok(await waitPort('twl-b', (p) => p.up && p.attaches === 1), 'when twl-b appears it is attached');
  await listening;
  t.equal(connect(), 'connected', 'and traffic flows to b');

  // The "guest" stops: its namespace and interface go away (a process left inside would keep them alive).
  const exited = new Promise((r) => server!.once('exit', r));
  server!.kill('SIGKILL');
  await exited;
  sh(['ip', 'netns', 'del', 'twl-nb']);
  lab.namespaces.splice(lab.namespaces.indexOf('twl-nb'), 1);
  lab.links.splice(lab.links.indexOf('twl-b'), 1);
  t.ok(await waitPort('twl-b', (p) => !p.up), 'when it vanishes the port goes down');
  t.equal(connect(), 'timeout', 'and nothing reaches b');
  t.match(await port('twl-a'), { up: true }, 'a is untouched');

  const again = bring();
  t.ok(await waitPort('twl-b', (p) => p.up && p.attaches === 2), 'when it comes back (a new interface, same name) it is attached again');
  await again;
  t.equal(connect(), 'connected', 'and traffic flows again, tapwall never restarted');
  t.equal(daemon.exitCode, null, 'the daemon is still running');
  t.match(await (await fetch(ready.metrics)).text(), /^tapwall_port_attaches_total\{port="twl-b",workload="b"\} 2$/m, 'the attaches are counted');
});
