// A daemon killed with SIGKILL and started again: the TCP connection open
// through it carries on, because the flow table lives in a shared mapping of
// STATE_DIR/flows.table that the new process resumes (src/flow/flowState.ts).
// The same run with --no-flow-state shows what happened before: the
// connection's segments are dropped as invalid_state and it hangs. And a
// state folder on a full tmpfs: the table cannot be kept there, the daemon
// says so and forwards as ever. Veths into namespaces (attach mode, as
// beside QEMU), removed at the end.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, SERVERS, TCP_CONNECT, TCP_STREAM, UDP_STREAM, lineReader, sh } from '../tools/lab.js';
import { apiCall } from '../src/cli/client.js';
import { collect, echoes, errors, until } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
/** Two VMs, `<p>a` and `<p>b` (vNICs tws-<p>a/b, in 10.83.<net>.0/24), a allowed to b's port 8080. */
const pairPolicy = (p: string, net: number, services: string) => `default: drop
workloads:
  ${p}a: { nic: tws-${p}a, mac: "02:83:00:00:0${net}:0a", ips: [10.83.${net}.1] }
  ${p}b: { nic: tws-${p}b, mac: "02:83:00:00:0${net}:0b", ips: [10.83.${net}.2] }
sections:
  - name: s
    rules:
      - { id: ${p}a-to-${p}b, from: 10.83.${net}.1, to: 10.83.${net}.2, services: [${services}], action: allow }
`;
const POLICY = pairPolicy('', 0, 'tcp/8080, udp/8080');

const lab = new Lab();
const dir = mkdtempSync(join(tmpdir(), 'tw-restart-'));
const daemons: ChildProcess[] = [];
let mounted: string | null = null;
t.teardown(() => {
  for (const d of daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
  lab.cleanup();
  for (const tap of ['tws-ta', 'tws-tb']) sh(['ip', 'link', 'del', tap], { allowFail: true });
  if (mounted) sh(['umount', mounted], { allowFail: true });
  rmSync(dir, { recursive: true, force: true });
});
writeFileSync(join(dir, 'policy.yaml'), POLICY);
lab.vethHost('tws-na', 'tws-a', 'tws-pa', '02:83:00:00:00:0a', ['10.83.0.1/24']);
lab.vethHost('tws-nb', 'tws-b', 'tws-pb', '02:83:00:00:00:0b', ['10.83.0.2/24']);
// Static neighbours: ARP answered by a killed daemon is not what is tested here.
sh(['ip', '-n', 'tws-na', 'neigh', 'replace', '10.83.0.2', 'lladdr', '02:83:00:00:00:0b', 'dev', 'tws-pa']);
sh(['ip', '-n', 'tws-nb', 'neigh', 'replace', '10.83.0.1', 'lladdr', '02:83:00:00:00:0a', 'dev', 'tws-pb']);

/** A daemon on the two veths; resolves when it says it is ready, with its stderr so far and to come. */
async function daemon(stateDir: string, extra: string[] = [], config = join(dir, 'policy.yaml'), mode = 'attach'): Promise<{ p: ChildProcess; socket: string; stderr: () => string }> {
  const socket = join(dir, `api-${daemons.length}.sock`);
  const p = spawn(process.execPath, [join(root, 'bin/tapwall.js'), 'run', '--config', config, '--mode', mode,
    '--state-dir', stateDir, '--api-socket', socket, '--no-metrics', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  daemons.push(p);
  let stderr = '';
  p.stderr!.on('data', (d) => { stderr += String(d); });
  const ready = JSON.parse(await lineReader(p, 15_000)()) as { ready: boolean };
  if (!ready.ready) throw new Error(`not ready: ${stderr}`);
  return { p, socket, stderr: () => stderr };
}

async function kill9(p: ChildProcess): Promise<void> {
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await gone;
}

const dropsOf = async (socket: string, reason: string): Promise<number> => {
  const st = (await apiCall<{ ports: Array<{ name: string; outcomes: Record<string, number> }> }>({ socket }, 'GET', '/v1/status')).body;
  return st.ports.find((p) => p.name === 'tws-a')?.outcomes[reason] ?? 0;
};

const server = lab.spawnIn('tws-nb', SERVERS, ['b', '8080']);
const serverReady = new Promise<void>((resolve) => server.stdout!.on('data', (d) => { if (String(d).includes('ready')) resolve(); }));

t.test('kill -9 and start again: the open TCP connection carries on', async (t) => {
  await serverReady;
  const state = join(dir, 'state');
  const first = await daemon(state);
  const stream = collect(lab.spawnIn('tws-na', TCP_STREAM, ['10.83.0.2', '8080', '50', '30000']));
  await until('echoes through the first daemon', () => echoes(stream.lines) >= 20, 10_000);
  // A UDP stream across the restart too (a datagram every 10 ms for 6 s): what it loses is the blackhole.
  const udp = collect(lab.spawnIn('tws-na', UDP_STREAM, ['10.83.0.2', '8080', '600', '10']));
  await new Promise((r) => setTimeout(r, 1000));
  await kill9(first.p);
  const killedAt = Date.now();
  const second = await daemon(state);
  const startedAt = Date.now();
  // Its log is written before the ready line, but stderr and stdout are two pipes: wait for the line.
  await until('the resume logged', () => /connections resumed from the previous process/.test(second.stderr()), 5000);
  const resumed = /"connections":(\d+)/.exec(second.stderr().split('\n').find((l) => l.includes('connections resumed')) ?? '');
  t.ok(resumed && Number(resumed[1]) >= 1, `at least the stream's connection (${resumed?.[1]})`);
  const before = echoes(stream.lines);
  await until('echoes through the new daemon', () => echoes(stream.lines) >= before + 20, 15_000);
  t.same(errors(stream.lines), [], 'no reset, no error, no close');
  t.equal(await dropsOf(second.socket, 'invalid_state'), 0, 'no segment of it was out of state for the new process');
  // How long the connection was blackholed: the longest silence between two echoes around the restart.
  const times = stream.lines.filter((l) => l.startsWith('echo ')).map((l) => Number(l.split(' ')[2]));
  let gap = 0;
  for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i] - times[i - 1]);
  await udp.done;
  const got = /echoed (\d+) of (\d+)/.exec(udp.lines.join('\n'));
  t.ok(got && Number(got[1]) > 0, 'the UDP stream got through before and after');
  t.comment(`restart: new process ready ${startedAt - killedAt} ms after the kill; longest silence on the TCP connection ${gap} ms (TCP retransmission timing included); UDP lost ${got ? Number(got[2]) - Number(got[1]) : '?'} of ${got?.[2]} datagrams sent every 10 ms`);
  await kill9(second.p);
});

t.test('the control: with --no-flow-state the same restart leaves the connection hanging', async (t) => {
  const state = join(dir, 'state-nofile');
  const first = await daemon(state, ['--no-flow-state']);
  const stream = collect(lab.spawnIn('tws-na', TCP_STREAM, ['10.83.0.2', '8080', '50', '30000']));
  await until('echoes through the first daemon', () => echoes(stream.lines) >= 20, 10_000);
  await kill9(first.p);
  const second = await daemon(state, ['--no-flow-state']);
  const before = echoes(stream.lines);
  await until('segments of the connection dropped as out of state', async () => (await dropsOf(second.socket, 'invalid_state')) >= 3, 15_000);
  t.equal(echoes(stream.lines), before, 'and no echo came back since the restart');
  t.notMatch(second.stderr(), /connections resumed/, 'nothing was resumed');
  await kill9(second.p);
});

t.test('a state folder on a full file system: no table file, forwarding as ever', async (t) => {
  const full = join(dir, 'full');
  mkdirSync(full);
  sh(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tws-full', full]);
  mounted = full;
  // Fill it, but for a little room for the tags and audit files.
  sh(['dd', 'if=/dev/zero', `of=${join(full, 'filler')}`, 'bs=4k', 'count=56'], { allowFail: true });
  const d = await daemon(full);
  await until('the flow state problem logged', () => /cannot keep the flow table in it/.test(d.stderr()), 5000);
  t.match(d.stderr(), /cannot keep the flow table in it \(.*cannot reserve \d+ bytes: No space left on device/, 'the daemon says why the table is not kept');
  t.equal(lab.runIn('tws-na', TCP_CONNECT, ['10.83.0.2', '8080', '3000']), 'connected', 'and forwards');
  await kill9(d.p);
  sh(['umount', full]);
  mounted = null;
});

t.test('tap mode with --tap-persist: the new process attaches to the TAPs inside the VMs, and the connection carries on', async (t) => {
  const config = join(dir, 'tap-policy.yaml');
  writeFileSync(config, pairPolicy('t', 1, 'tcp/8080'));
  const state = join(dir, 'state-tap');
  const first = await daemon(state, ['--tap-persist'], config, 'tap');
  // The TAPs' kernel sides become the VMs' NICs, in their own namespaces (as a container's would).
  lab.host('tws-nta', 'tws-ta', '02:83:00:00:01:0a', ['10.83.1.1/24']);
  lab.host('tws-ntb', 'tws-tb', '02:83:00:00:01:0b', ['10.83.1.2/24']);
  sh(['ip', '-n', 'tws-nta', 'neigh', 'replace', '10.83.1.2', 'lladdr', '02:83:00:00:01:0b', 'dev', 'tws-ta']);
  sh(['ip', '-n', 'tws-ntb', 'neigh', 'replace', '10.83.1.1', 'lladdr', '02:83:00:00:01:0a', 'dev', 'tws-tb']);
  const srv = lab.spawnIn('tws-ntb', SERVERS, ['tb', '8080']);
  await new Promise<void>((resolve) => srv.stdout!.on('data', (d) => { if (String(d).includes('ready')) resolve(); }));
  const stream = collect(lab.spawnIn('tws-nta', TCP_STREAM, ['10.83.1.2', '8080', '50', '30000']));
  await until('echoes through the first daemon', () => echoes(stream.lines) >= 20, 10_000);
  await kill9(first.p);
  t.match(sh(['ip', '-n', 'tws-nta', '-d', 'link', 'show', 'tws-ta']), /persist on/, "the VM's TAP outlived the daemon, in the VM's namespace");
  const second = await daemon(state, ['--tap-persist'], config, 'tap');
  t.equal(sh(['ip', 'link', 'show', 'tws-ta'], { allowFail: true }), '', 'the new process made no new TAP of that name beside it');
  const before = echoes(stream.lines);
  await until('echoes through the new daemon', () => echoes(stream.lines) >= before + 20, 15_000);
  t.same(errors(stream.lines), [], 'the connection carried on through the TAPs it attached to again: no reset, no error');
  await kill9(second.p);
});
