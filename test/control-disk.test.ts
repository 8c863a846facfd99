// The state folder full or read-only: the daemon never stops, and a change is
// either applied and recorded or not applied at all; the flow log loses
// lines (counted) rather than the process. The state folder (tags,
// audit log) is a 256 KiB tmpfs, the policy file lives elsewhere; the
// daemon runs in attach mode with vNICs that do not exist (reported absent),
// so no devices are needed. The mount is removed at the end, also on failure.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, statSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { lineReader, sh } from '../tools/lab.js';
import { ApiError, apiCall } from '../src/cli/client.js';
import { until, untilValue } from './fixtures.js';
import { MemLab } from './memlab.js';
import { FlowLogWriter } from '../src/control/flowLogWriter.js';
import { frameBuild } from '../src/packet/build.js';
import { TCP_SYN } from '../src/packet/parse.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const policy = (port: number) => `default: drop
workloads:
  web: { nic: twd-web, mac: "02:84:00:00:00:01", ips: [10.84.0.1] }
  db: { nic: twd-db, mac: "02:84:00:00:00:02", ips: [10.84.0.2] }
sections:
  - name: s
    rules:
      - { id: web-db, from: 10.84.0.1, to: 10.84.0.2, services: [tcp/${port}], action: allow }
`;

const dir = mkdtempSync(join(tmpdir(), 'tw-disk-'));
const state = join(dir, 'state');
mkdirSync(state);
let daemon: ChildProcess | null = null;
let mounted = false;
t.teardown(() => {
  if (daemon && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
  if (mounted) sh(['umount', state], { allowFail: true });
  rmSync(dir, { recursive: true, force: true });
});
sh(['mount', '-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'twd-state', state]);
mounted = true;
const config = join(dir, 'policy.yaml');
writeFileSync(config, policy(5432));
const socket = join(dir, 'api.sock');
const api = { socket };

type Status = { revision: { policy: number; tags: number }; generation: number; applyFailures: number; lastError: { message: string } | null };
const status = async () => (await apiCall<Status>(api, 'GET', '/v1/status')).body;
const dynamicTags = async (w: string) => (await apiCall<{ workloads: Array<{ name: string; dynamicTags: Array<{ tag: string }> }> }>(api, 'GET', '/v1/workloads'))
  .body.workloads.find((x) => x.name === w)!.dynamicTags.map((d) => d.tag);
const inForce = async () => (await apiCall<{ text: string }>(api, 'GET', '/v1/policy')).body.text;
const refusal = async (p: Promise<unknown>): Promise<ApiError> => p.then(() => { throw new Error('expected a refusal'); }, (e: unknown) => {
  if (e instanceof ApiError) return e;
  throw e;
});
const auditLines = () => readFileSync(join(state, 'audit.jsonl'), 'utf8').split('\n').filter((l) => l !== '' && !l.startsWith('{"pad"'));
/**
 * Fill the tmpfs. The audit log's last page may have room left, where an
 * append needs no new page: pad it to a page boundary first, with a valid
 * JSON line, so that every append after the fill fails.
 */
const fill = async () => {
  // The tags file's swap file keeps the text a write replaced for 20 ms, then is cut (store.ts, SwapWriter):
  // a cut after the fill would free a page, where the next tags write would find room.
  const swap = join(state, '.tags.json.swap');
  await until('the tags swap file cut', () => !existsSync(swap) || statSync(swap).size === 0);
  const audit = join(state, 'audit.jsonl');
  const size = existsSync(audit) ? statSync(audit).size : 0;
  let pad = (4096 - (size % 4096)) % 4096;
  if (pad > 0 && pad < 16) pad += 4096;
  if (pad > 0) appendFileSync(audit, `${JSON.stringify({ pad: 'x'.repeat(pad - 11) })}\n`);
  sh(['dd', 'if=/dev/zero', `of=${join(state, 'filler')}`, 'bs=4k'], { allowFail: true });
};
const unfill = () => rmSync(join(state, 'filler'), { force: true });
const alive = () => daemon !== null && daemon.exitCode === null && daemon.signalCode === null;

let stderr = '';
t.before(async () => {
  daemon = spawn(process.execPath, [join(root, 'bin/tapwall.js'), 'run', '--config', config, '--mode', 'attach', '--state-dir', state,
    '--api-socket', socket, '--no-metrics', '--no-flow-state'], { stdio: ['ignore', 'pipe', 'pipe'] });
  daemon.stderr!.on('data', (d) => { stderr += String(d); });
  const ready = JSON.parse(await lineReader(daemon, 15_000)()) as { ready: boolean };
  if (!ready.ready) throw new Error(stderr);
});

t.test('a full state folder: changes refused or held, never half done, and the daemon stays', async (t) => {
  // A quarantine with a short TTL, while there is room; it must expire only once that can be written. Its expiry
  // must come after the fill: a tag still there once the folder is full has not expired (an expiry is stored
  // before the tag is let go). On a machine so slow that it expired first, again with a longer TTL.
  let ttl = 0;
  let before: Status | null = null;
  for (const seconds of [3, 10, 30]) {
    await apiCall(api, 'POST', '/v1/workloads/web/tags', { add: ['quarantine'], reason: 'disk test', ttl: seconds });
    before = await status();
    await fill();
    if ((await dynamicTags('web')).includes('quarantine')) { ttl = seconds; break; }
    unfill();
  }
  t.ok(ttl > 0, `the quarantine was still on when the folder filled (TTL ${ttl} s)`);

  // A tag change: tags.json cannot be written, so nothing changes.
  const tagRefused = await refusal(apiCall(api, 'POST', '/v1/workloads/db/tags', { add: ['suspect'], reason: 'disk test' }));
  t.equal(tagRefused.status, 503, `a tag change answers 503 (${tagRefused.message})`);
  t.equal(tagRefused.apiCode, 'store-unavailable', 'it was not stored (not stored and then refused by the audit log)');
  t.same(await dynamicTags('db'), [], 'and is not in force');
  t.same(readdirSync(state).filter((f) => f.includes('.tmp') || f.endsWith('~')), [], 'no temporary file is left');

  // A policy edit picked up from the file (elsewhere, so it is stored): it cannot be recorded, so it is not applied.
  writeFileSync(config, policy(5433));
  await until('the edit seen and held back', async () => /audit log .* cannot be written/.test((await status()).lastError?.message ?? ''), 10_000);
  t.match(await inForce(), /tcp\/5432/, 'the policy in force is still the recorded one');
  t.ok(auditLines().every((l) => { try { JSON.parse(l); return true; } catch { return false; } }), 'the audit log has no half line');

  // The TTL expires now, but the tags file cannot be written: the tag stays, and the removal is retried.
  await until('the expiry tried and held back', () => /expired tag could not be removed/.test(stderr), 10_000 + ttl * 1000);
  t.same(await dynamicTags('web'), ['quarantine'], 'the quarantine holds until its expiry can be stored');
  t.ok(alive(), 'the daemon is running');
  t.ok((await status()).applyFailures > before!.applyFailures, 'the failures are counted');

  // Room again: everything held back goes through, recorded, with no restart.
  unfill();
  await until('the held edit applied', async () => /tcp\/5433/.test(await inForce()), 10_000);
  await until('the quarantine expired', async () => (await dynamicTags('web')).length === 0, 10_000);
  const actions = auditLines().map((l) => JSON.parse(l) as { action: string });
  t.ok(actions.some((a) => a.action === 'policy.applied'), 'the edit is in the audit log');
  t.ok(actions.some((a) => a.action === 'tag.expired'), 'and so is the expiry');
  t.ok(alive(), 'the daemon never stopped');
});

t.test('the audit log full while the store has room: a PUT is stored but not applied until it is recorded', async (t) => {
  // Only the audit log is on the full folder here: the policy file (the store) is not.
  const rev = (await apiCall<{ revision: number }>(api, 'GET', '/v1/policy')).body.revision;
  await fill();
  const e = await refusal(apiCall(api, 'PUT', '/v1/policy', policy(5434), { 'content-type': 'application/yaml', 'if-match': `"${rev}"` }));
  t.equal(e.status, 503, 'the PUT answers 503');
  t.match(e.message, /stored at revision \d+ but not applied: .*audit log/, `and says what happened (${e.message})`);
  t.match(await inForce(), /tcp\/5433/, 'the data plane runs the recorded policy');
  unfill();
  await until('the stored policy applied once recorded', async () => /tcp\/5434/.test(await inForce()), 10_000);
  const stored = Number(/stored at revision (\d+)/.exec(e.message)![1]);
  t.ok(auditLines().some((l) => { const a = JSON.parse(l) as { revision?: number; action: string }; return a.action === 'policy.applied' && a.revision === stored; }), `recorded as applied at revision ${stored}`);
  t.equal((await status()).revision.policy, stored, 'and in force at that revision');
});

t.test('a read-only state folder: refused with the reason, nothing changes, and back when writable', async (t) => {
  sh(['mount', '-o', 'remount,ro', state]);
  try {
    const e = await refusal(apiCall(api, 'POST', '/v1/workloads/db/tags', { add: ['suspect'], reason: 'read-only test' }));
    t.equal(e.status, 503, `503 (${e.message})`);
    t.match(e.message, /EROFS|read-only/, 'naming the read-only file system');
    t.same(await dynamicTags('db'), [], 'nothing in force');
  } finally {
    sh(['mount', '-o', 'remount,rw', state]);
  }
  await apiCall(api, 'POST', '/v1/workloads/db/tags', { add: ['suspect'], reason: 'writable again' });
  t.same(await untilValue('the tag', () => dynamicTags('db'), (v) => v.length === 1), ['suspect'], 'writable again: the change goes through');
  t.ok(existsSync(join(state, 'tags.json')), 'and is stored');
  t.ok(alive(), 'the daemon never stopped');
});

t.test('the flow log on a full disk: lines counted as lost, never half written, and no crash', async (t) => {
  const lab = new MemLab(`default: drop
workloads:
  a: { nic: twd-a, mac: "02:84:00:00:01:01", ips: [10.84.1.1] }
  b: { nic: twd-b, mac: "02:84:00:00:01:02", ips: [10.84.1.2] }
sections:
  - name: s
    rules:
      - { id: a-to-b, from: 10.84.1.1, to: 10.84.1.2, services: [tcp/80], action: allow, log: true }
`, { uplink: null, dataplane: { flowLog: { rate: 1000, burst: 1000 } } });
  const file = join(state, 'flows.jsonl');
  const told: string[] = [];
  const writer = new FlowLogWriter(lab.dp, lab.dp.ct.flowLog!, file, false, (m) => told.push(m));
  let sport = 40000;
  const syn = () => lab.send('twd-a', frameBuild({ family: 4, proto: 6, srcMac: '02:84:00:00:01:01', dstMac: '02:84:00:00:01:02', src: '10.84.1.1', dst: '10.84.1.2', sport: sport++, dport: 80, flags: TCP_SYN }));
  syn();
  writer.drain();
  t.equal(writer.lines, 1, 'a decision line written while there is room');
  await fill();
  // Enough lines to need a new page of the file.
  for (let i = 0; i < 40; i++) syn();
  t.doesNotThrow(() => writer.drain(), 'a write the disk refuses does not throw');
  t.equal(writer.lost, 40, 'its lines are counted as lost');
  t.match(told.join('\n'), /flow log .* cannot be written \(ENOSPC\): 40 lines lost/, 'and told');
  const whole = () => readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').every((l) => { try { JSON.parse(l); return true; } catch { return false; } });
  t.ok(whole(), 'the file holds whole lines only');
  unfill();
  syn();
  writer.drain();
  t.equal(readFileSync(file, 'utf8').trim().split('\n').length, 2, 'room again: the next line is written after the first');
  t.ok(whole(), 'still whole lines');
  writer.stop();
  lab.stop();
});
