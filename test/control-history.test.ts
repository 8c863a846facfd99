// Policy history of a running `tapwall run` (TAP ports it creates and removes
// itself; no traffic): every version put in force is kept with who and when,
// `policy diff` tells added, removed, moved and changed rules, a rollback is
// an ordinary audited apply (stale If-Match refused), the history survives a
// restart, and bad requests (an unknown version, a malformed id, a diff of
// versions that do not exist) get an error and change nothing.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { lineReader } from '../tools/lab.js';
import { apiCall } from '../src/cli/client.js';
import { tieredPolicy } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'bin/tapwall.js');
const dir = mkdtempSync(join(tmpdir(), 'tw-hist-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const policyFile = join(dir, 'policy.yaml'), stateDir = join(dir, 'state'), socket = join(dir, 'api.sock');
const V1 = tieredPolicy('twh', 79);
// v2: app-to-db now also allows tcp/6432, a new rule after it; v3: web-to-app moved below app-to-db, no-web-db removed.
const V2 = V1.replace('services: [tcp/5432], action: allow, log: true }', 'services: [tcp/5432, tcp/6432], action: allow, log: true }\n      - { id: no-web-db, from: web, to: db, action: drop }');
const V3 = V1.replace(/( {6}- \{ id: web-to-app[^\n]*\n)( {6}- \{ id: app-to-db[^\n]*\n)/, '$2$1');
writeFileSync(policyFile, V1);

let daemon: ChildProcess | null = null;
t.teardown(() => { if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL'); });
async function start(): Promise<void> {
  daemon = spawn(process.execPath, [cli, 'run', '--config', policyFile, '--state-dir', stateDir, '--api-socket', socket, '--no-metrics', '--no-flow-state'], { stdio: ['ignore', 'pipe', 'pipe'] });
  JSON.parse(await lineReader(daemon, 15_000)());
}
async function stop(): Promise<void> {
  const d = daemon!;
  const exited = new Promise((resolve) => d.once('exit', resolve));
  d.kill('SIGTERM');
  await exited;
}
const target = { socket };
const api = <T = Record<string, any>>(method: string, path: string, body?: string | object, headers?: Record<string, string>) => apiCall<T>(target, method, path, body, headers)
  .catch((e: { status?: number; body?: Record<string, any> }) => ({ status: e.status ?? 0, body: e.body ?? {}, headers: {} }));
const tw = (...args: string[]) => spawnSync(process.execPath, [cli, ...args, '--api-socket', socket], { encoding: 'utf8' });
const put = async (text: string, by: string, reason?: string) => {
  const rev = (await api<{ revision: number }>('GET', '/v1/policy')).body.revision;
  return api('PUT', '/v1/policy', text, { 'if-match': `"${rev}"`, 'content-type': 'application/yaml', 'x-tapwall-actor': by, ...(reason ? { 'x-tapwall-reason': reason } : {}) });
};

t.test('versions are kept, compared rule by rule, and rolled back through an audited apply', async (t) => {
  await start();
  t.equal((await put(V2, 'alice', 'the replica listens on 6432')).status, 200, 'v2 applied');
  t.equal((await put(V3, 'bob')).status, 200, 'v3 applied');
  const list = (await api<{ entries: Array<{ id: number; by: string; reason?: string; rules: number }> }>('GET', '/v1/policy/history')).body.entries;
  t.same(list.map((e) => [e.id, e.rules]), [[3, 4], [2, 5], [1, 4]], 'three versions, newest first, with their rule counts');
  t.match(list[0].by, /^bob/, 'who applied v3');
  t.match(list[1].by, /^alice/, 'who applied v2');
  t.equal(list[1].reason, 'the replica listens on 6432', 'and why');
  t.equal((await api<{ text: string }>('GET', '/v1/policy/history/2')).body.text, V2, 'version 2 is kept as it was applied');

  const d12 = (await api('GET', '/v1/policy/diff?from=1&to=2')).body;
  t.same(d12.added.map((r: { id: string }) => r.id), ['no-web-db'], '1 -> 2: no-web-db added');
  t.same(d12.changed, [{ section: 'application', id: 'app-to-db', fields: ['services'] }], '1 -> 2: app-to-db changed its services');
  t.same([d12.removed, d12.moved], [[], []], '1 -> 2: nothing removed or moved');
  const d23 = (await api('GET', '/v1/policy/diff?from=2&to=3')).body;
  t.same(d23.removed.map((r: { id: string }) => r.id), ['no-web-db'], '2 -> 3: no-web-db removed');
  t.same(d23.moved.map((m: { id: string }) => m.id).sort(), ['app-to-db', 'web-to-app'], '2 -> 3: the two application rules swapped places');
  const dRunning = (await api('GET', '/v1/policy/diff?from=3')).body;
  t.same([dRunning.to, dRunning.added, dRunning.removed, dRunning.moved, dRunning.changed], ['running', [], [], [], []], 'v3 against the policy in force: the same');
  const text = tw('policy', 'diff', '1', '2');
  t.equal(text.status, 0, text.stderr);
  t.match(text.stdout, /\+ application\/no-web-db/, 'the CLI shows the added rule');
  t.match(text.stdout, /\* application\/app-to-db changed: services/, 'and the changed one');

  // Bad requests change nothing.
  const before = (await api<{ revision: number }>('GET', '/v1/policy')).body.revision;
  t.equal((await api('GET', '/v1/policy/history/99')).status, 404, 'an unknown version: 404');
  t.equal((await api('GET', '/v1/policy/history/x1')).status, 400, 'a malformed id: 400');
  t.equal((await api('GET', '/v1/policy/diff?from=1&to=42')).status, 404, 'a diff with a version that does not exist: 404');
  t.equal((await api('POST', '/v1/policy/rollback', { id: 42 }, { 'if-match': '*' })).status, 404, 'a rollback to an unknown version: 404');
  t.equal((await api('POST', '/v1/policy/rollback', { id: 1 })).status, 428, 'a rollback without If-Match: 428');
  t.equal((await api('POST', '/v1/policy/rollback', { id: 1 }, { 'if-match': `"${before - 1}"` })).status, 412, 'a rollback against a stale revision: 412');
  t.equal((await api<{ revision: number }>('GET', '/v1/policy')).body.revision, before, 'none of them changed the policy');

  // The rollback: through the CLI, an ordinary apply.
  const rb = tw('policy', 'rollback', '1', '--by', 'carol', '--reason', 'the replica is gone');
  t.equal(rb.status, 0, rb.stderr);
  t.match(rb.stdout, /rolled back to #1/);
  t.equal((await api<{ text: string }>('GET', '/v1/policy')).body.text, V1, 'the policy in force is version 1 again');
  t.equal(readFileSync(policyFile, 'utf8'), V1, 'and so is the config file');
  const audit = readFileSync(join(stateDir, 'audit.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { action: string; by: string });
  t.match(audit.at(-1), { action: 'policy.applied', by: /^carol .*rollback to #1$/, reason: 'the replica is gone' }, 'the audit log has the rollback, by whom and why');
  const after = (await api<{ entries: Array<{ id: number; sha256: string }> }>('GET', '/v1/policy/history')).body.entries;
  t.same([after[0].id, after[0].sha256], [4, after.find((e) => e.id === 1)!.sha256], 'the rollback is version 4, the same text as version 1');

  await stop();
  await start();
  const kept = (await api<{ entries: Array<{ id: number }> }>('GET', '/v1/policy/history')).body.entries;
  t.same(kept.map((e) => e.id), [4, 3, 2, 1], 'the history survives a restart (and the same text applied at start is not a new version)');
  // The status shows shadowed rules of the policy in force (found off the packet thread, once per document).
  t.equal((await api<{ shadowed: { count: number } }>('GET', '/v1/status')).body.shadowed.count, 0, 'no shadowed rule in version 1');
  t.equal((await put(V1.replace(/( {6}- \{ id: web-to-app[^\n]*\n)/, '$1      - { id: dead-web-to-app, from: web, to: app, services: [tcp/8080], action: drop }\n'), 'dave')).status, 200);
  const status = (await api<{ shadowed: { count: number; rules: Array<{ code: string; message: string }> } }>('GET', '/v1/status')).body.shadowed;
  t.ok(status.count === 1 && status.rules[0].message.includes('dead-web-to-app'), `the status names the shadowed rule: ${JSON.stringify(status)}`);
  await stop();
});
