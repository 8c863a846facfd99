// The control-plane API of a running `tapwall run` (TAP ports it creates and
// removes itself; no traffic here, that is control-netns.test.ts): the Unix
// socket's mode, bearer tokens on TCP (401 and nothing changed), bad requests
// answered 400 with located problems, concurrent PUTs with a stale revision,
// tags with a time-to-live, the audit log, tags kept across a restart, the
// watched config file (a broken edit refused and counted), and the CLI.
import { native } from '../src/io/native.js';
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { lineReader } from '../tools/lab.js';
import { apiCall } from '../src/cli/client.js';
import { makeTls } from '../bench/etcd.js';
import { tieredPolicy, until } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'bin/tapwall.js');

const POLICY = tieredPolicy('twc', 78);

const dir = mkdtempSync(join(tmpdir(), 'tw-api-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const policyFile = join(dir, 'policy.yaml');
const stateDir = join(dir, 'state');
const socket = join(dir, 'api.sock');
const tokenFile = join(dir, 'token');
const TOKEN = 'test-token-0123456789abcdef';
writeFileSync(policyFile, POLICY);
writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });

let daemon: ChildProcess | null = null;
let apiUrl = '';
let metricsUrl = '';
t.teardown(() => { if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL'); });

async function start(): Promise<void> {
  // With its forwarding thread on a CPU of its own: everything below runs through a placed daemon.
  daemon = spawn(process.execPath, [cli, 'run', '--config', policyFile, '--state-dir', stateDir, '--api-socket', socket,
    '--api-listen', '127.0.0.1:0', '--api-token-file', tokenFile, '--metrics', '127.0.0.1:0', '--forwarding-cpu', 'auto'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const ready = JSON.parse(await lineReader(daemon, 15_000)()) as { api: { url: string }; metrics: string };
  apiUrl = ready.api.url;
  metricsUrl = ready.metrics;
}

async function stop(): Promise<void> {
  const d = daemon!;
  const exited = new Promise((resolve) => d.once('exit', resolve));
  d.kill('SIGTERM');
  await exited;
}

interface Answer { status: number; body: Record<string, any>; headers: Record<string, unknown> }

/** One request, over the Unix socket or (tcp: true) over TCP with the given token. */
function call(method: string, path: string, body?: string | object, opts: { tcp?: boolean; token?: string | null; headers?: Record<string, string> } = {}): Promise<Answer> {
  const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  const headers: Record<string, string> = { ...opts.headers };
  if (payload !== undefined) headers['content-length'] = String(Buffer.byteLength(payload));
  if (opts.tcp && opts.token !== null) headers.authorization = `Bearer ${opts.token ?? TOKEN}`;
  const u = new URL(apiUrl || 'http://x');
  const target = opts.tcp ? { hostname: u.hostname, port: u.port } : { socketPath: socket };
  return new Promise((resolve, reject) => {
    // A connection each (as the CLI's apiCall): a kept one can be closed by the API while this process is held
    // up in a synchronous CLI command, and the next request written into it fails.
    const req = request({ ...target, path, method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString() || '{}'), headers: res.headers }));
    });
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

function audit(): Array<Record<string, unknown>> {
  return readFileSync(join(stateDir, 'audit.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}


const trace = async (packet: string) => (await call('POST', '/v1/trace', { packet })).body as { verdict: string; steps: Array<{ rule: { id: string } | null }> };

t.test('the API of a running daemon', async (t) => {
  await start();

  t.test('the Unix socket is for root only', async (t) => {
    t.equal(statSync(socket).mode & 0o777, 0o600, 'mode 0600');
    const s = await call('GET', '/v1/status');
    t.equal(s.status, 200);
    t.equal(s.body.generation, 1, 'one policy applied so far');
    t.same(s.body.ports.map((p: { name: string }) => p.name), ['twc-web1', 'twc-app1', 'twc-db1'], 'ports listed');
  });

  t.test('TCP needs the bearer token', async (t) => {
    for (const token of [null, 'wrong-token-0123456789abcdef', `${TOKEN}x`]) {
      const r = await call('GET', '/v1/status', undefined, { tcp: true, token });
      t.equal(r.status, 401, `token ${token === null ? 'missing' : 'wrong'}: 401`);
      t.equal(r.body.error.code, 'unauthorized');
    }
    const denied = await call('POST', '/v1/workloads/web-1/tags', { add: ['quarantine'], reason: 'x' }, { tcp: true, token: 'not-the-token-0123456789' });
    t.equal(denied.status, 401, 'a tag change without the token is refused');
    const after = await call('GET', '/v1/workloads');
    t.same(after.body.workloads.find((w: { name: string }) => w.name === 'web-1').dynamicTags, [], 'and changed nothing');
    t.equal((await call('GET', '/v1/status')).body.generation, 1, 'no policy was applied');
    const ok = await call('GET', '/v1/status', undefined, { tcp: true });
    t.equal(ok.status, 200, 'with the token: 200');
  });

  t.test('bad requests get 400 with located problems', async (t) => {
    const ttl = await call('POST', '/v1/workloads/web-1/tags', '{"add": ["quarantine"], "reason": "x",\n  "ttl": "soon"}');
    t.equal(ttl.status, 400);
    t.match(ttl.body.problems[0], { file: '(request)', line: 2, column: 3, path: 'ttl', code: 'bad-value' }, 'a bad ttl, with its line and column');
    const syntax = await call('POST', '/v1/workloads/web-1/tags', '{"add": [\n');
    t.equal(syntax.status, 400);
    t.equal(syntax.body.problems[0].code, 'syntax', 'broken JSON');
    const repeated = await call('POST', '/v1/workloads/web-1/tags', '{"add": ["quarantine"], "reason": "x",\n "add": ["harmless"]}');
    t.equal(repeated.status, 400, 'a key given twice: 400, not the last one taken');
    t.match(repeated.body.problems[0], { code: 'syntax', line: 2 }, 'placed at the repeated key');
    const unknown = await call('POST', '/v1/workloads/web-1/tags', { add: ['x'], reason: 'r', colour: 'red' });
    t.match(unknown.body.problems[0], { path: 'colour', code: 'unknown-key' }, 'an unknown key');
    t.match((await call('POST', '/v1/workloads/web-1/tags', { add: ['x'] })).body.problems[0], { path: 'reason', code: 'missing-key' }, 'no reason');
    t.match((await call('POST', '/v1/workloads/web-1/tags', { add: ['bad tag'], reason: 'r' })).body.error, { code: 'bad-tag' }, 'a bad tag name');
    t.equal((await call('POST', '/v1/workloads/nobody/tags', { add: ['x'], reason: 'r' })).status, 404, 'an unknown workload: 404');
    t.equal((await call('POST', '/v1/workloads/web-1/tags', 'x'.repeat(2 << 20))).status, 413, 'a body over 1 MiB: 413');
    t.equal((await call('GET', '/v1/nothing')).status, 404, 'an unknown endpoint: 404');
    t.equal((await call('DELETE', '/v1/policy')).status, 405, 'a wrong method: 405');
    t.equal((await call('POST', '/v1/trace', { packet: 'tcp nowhere' })).status, 400, 'a bad packet to trace: 400');
    t.equal((await call('GET', '/v1/flows?state=sideways')).status, 400, 'a bad flow filter: 400');

    const rev = (await call('GET', '/v1/policy')).body.revision as number;
    t.equal((await call('PUT', '/v1/policy', POLICY)).status, 428, 'PUT without If-Match: 428');
    const broken = POLICY.replace('action: allow }', 'action: permit }');
    const put = await call('PUT', '/v1/policy', broken, { headers: { 'if-match': `"${rev}"` } });
    t.equal(put.status, 400, 'an invalid policy: 400');
    // The same problems `tapwall check --json` reports for the same text.
    const file = join(dir, 'broken.yaml');
    writeFileSync(file, broken);
    const check = JSON.parse(spawnSync(process.execPath, [cli, 'check', '--json', file], { encoding: 'utf8' }).stdout) as { problems: Array<Record<string, unknown>> };
    const strip = (ps: Array<Record<string, unknown>>) => ps.filter((p) => p.severity === 'error').map(({ file: _f, ...rest }) => rest);
    t.same(strip(put.body.problems), strip(check.problems), 'problems as tapwall check reports them (line, column, path, code)');
    t.equal((await call('GET', '/v1/policy')).body.revision, rev, 'none of these changed the policy');
    t.equal((await call('GET', '/v1/status')).body.generation, 1, 'or applied anything');
  });

  t.test('a workload added or removed: its vNIC is attached or detached without a restart', async (t) => {
    const ports = async () => ((await call('GET', '/v1/status')).body.ports as Array<{ name: string; workload: string; up: boolean }>);
    const rev = (await call('GET', '/v1/policy')).body.revision as number;
    const moreNics = POLICY.replace('groups:', '  db-2: { nic: twc-db2, mac: "02:78:00:00:03:32", ips: [10.78.3.32], tags: [db] }\ngroups:');
    const put = await call('PUT', '/v1/policy', moreNics, { headers: { 'if-match': `"${rev}"` } });
    t.equal(put.status, 200, 'a policy with a new vNIC is applied');
    t.ok(typeof put.body.loadMs === 'number' && put.body.loadMs > 0, `the answer says how long loading the new text took (${put.body.loadMs} ms)`);
    t.match((await ports()).find((p) => p.name === 'twc-db2'), { workload: 'db-2', up: true }, 'its TAP port is open');
    t.equal(spawnSync('ip', ['link', 'show', 'twc-db2']).status, 0, 'the TAP device exists');
    t.equal((await trace('tcp 10.78.2.21:40000 -> 10.78.3.32:5432')).verdict, 'allow', 'and the policy covers it (app -> db)');
    const back = await call('PUT', '/v1/policy', POLICY, { headers: { 'if-match': `"${put.body.revision}"` } });
    t.equal(back.status, 200, 'the policy without it is applied');
    t.notOk((await ports()).some((p) => p.name === 'twc-db2'), 'its port is gone from the status');
    t.not(spawnSync('ip', ['link', 'show', 'twc-db2']).status, 0, 'and its TAP device was closed');
    t.equal((await call('GET', '/v1/status')).body.ports.length, 3, 'the other ports stayed');
  });

  t.test('requests past the limits get a 400 with the reason, and change nothing', async (t) => {
    const before = (await call('GET', '/v1/workloads')).body.workloads.find((w: { name: string }) => w.name === 'web-1').dynamicTags.length;
    const cases: Array<[string, string, object | undefined, RegExp]> = [
      ['a numeric TTL of 1e13 s', '/v1/workloads/web-1/tags', { add: ['x1'], reason: 'r', ttl: 1e13 }, /ttl: expected a duration/],
      ['65 tags in one request', '/v1/workloads/web-1/tags', { add: Array.from({ length: 65 }, (_, i) => `t${i}`), reason: 'r' }, /at most 64 tags/],
      ['a 200-character tag', '/v1/workloads/web-1/tags', { add: ['a'.repeat(200)], reason: 'r' }, /at most 128 characters/],
      ['a 2,000-character reason', '/v1/workloads/web-1/tags', { add: ['x2'], reason: 'r'.repeat(2000) }, /at most 1024 characters/],
      ['malformed percent-encoding in the name', '/v1/workloads/web%E0%A4%A/tags', { add: ['x3'], reason: 'r' }, /percent-encoding/],
    ];
    for (const [what, path, body, re] of cases) {
      const r = await call('POST', path, body);
      t.equal(r.status, 400, `${what}: 400`);
      t.match(r.body.error.message, re, `${what}: says why`);
    }
    const flows = await call('GET', '/v1/flows?limit=100000');
    t.equal(flows.status, 400, 'GET /v1/flows?limit=100000: 400 (pages are at most 10,000)');
    const after = (await call('GET', '/v1/workloads')).body.workloads.find((w: { name: string }) => w.name === 'web-1').dynamicTags.length;
    t.equal(after, before, 'no tag was added by any of them');
  });

  t.test('two writers with the same revision: one wins, the other gets 412', async (t) => {
    chmodSync(policyFile, 0o644);
    const rev = (await call('GET', '/v1/policy')).body.revision as number;
    const a = POLICY.replace('tcp/8080', 'tcp/8081'), b = POLICY.replace('tcp/8080', 'tcp/8082');
    const [ra, rb] = await Promise.all([a, b].map((text) => call('PUT', '/v1/policy', text, { headers: { 'if-match': `"${rev}"` } })));
    t.same([ra.status, rb.status].sort(), [200, 412], 'exactly one succeeded');
    const winner = ra.status === 200 ? a : b;
    const loser = ra.status === 200 ? rb : ra;
    t.equal(loser.body.error.code, 'stale-revision');
    const now = await call('GET', '/v1/policy');
    t.equal(now.body.text, winner, "the winner's policy is in force, the loser's change was not silently mixed in");
    t.equal(readFileSync(policyFile, 'utf8'), winner, 'and written to the config file');
    t.equal(statSync(policyFile).mode & 0o777, 0o644, 'which keeps its mode (0644, not 0600)');
    t.equal(now.headers.etag, `"${now.body.revision}"`, 'ETag carries the revision');
    const back = await call('PUT', '/v1/policy', POLICY, { headers: { 'if-match': `"${now.body.revision}"`, 'x-tapwall-actor': 'test-suite' } });
    t.equal(back.status, 200, 'a writer with the current revision succeeds');
    t.match(audit().filter((e) => e.action === 'policy.applied').at(-1), { by: 'test-suite (unix-socket)' }, 'the audit log names who applied it');
  });

  t.test('a large policy with characters of every width arrives as it was sent, in the API and the config file', async (t) => {
    // Half a megabyte of comments in 1-, 2-, 3- and 4-byte characters: the body's chunks end inside characters.
    const comments = Array.from({ length: 6000 }, (_, i) => `# ${i} aé中😀 ${'xé😀'.repeat(i % 13)}`).join('\n');
    const text = `${comments}\n${POLICY}`;
    const rev = (await call('GET', '/v1/policy')).body.revision as number;
    const put = await call('PUT', '/v1/policy', text, { headers: { 'if-match': `"${rev}"` } });
    t.equal(put.status, 200, 'applied');
    t.ok(Buffer.byteLength(text) > 256 * 1024, 'more than a slice of the file writer, and many chunks of the request');
    t.equal((await call('GET', '/v1/policy')).body.text, text, 'the text in force is the text sent');
    t.equal(readFileSync(policyFile, 'utf8'), text, 'and so is the config file');
    const back = await call('PUT', '/v1/policy', POLICY, { headers: { 'if-match': `"${(await call('GET', '/v1/policy')).body.revision}"` } });
    t.equal(back.status, 200, 'the policy put back');
  });

  t.test('a tag with a time-to-live: in force at once, gone when it expires', async (t) => {
    t.equal((await trace('tcp 10.78.1.11:40000 -> 10.78.2.21:8080')).verdict, 'allow', 'web -> app is allowed');
    // An hour first, so that nothing below depends on how fast this machine answers: the tag cannot expire while
    // it is checked (with a second, a slow run saw it gone before the checks). Then a second, to see it expire.
    const r = await call('POST', '/v1/workloads/web-1/tags', { add: ['quarantine'], reason: 'malware found', ttl: '1h', by: 'anti-malware' });
    t.equal(r.status, 200);
    t.ok(r.body.tags.includes('quarantine'), 'web-1 has the tag');
    t.equal(r.body.apply.loadMs, null, 'a tag change loads no text: the document in force was held');
    const q = await trace('tcp 10.78.1.11:40000 -> 10.78.2.21:8080');
    t.equal(q.verdict, 'drop', 'web -> app is dropped while quarantined');
    t.equal(q.steps.find((s) => s.rule)?.rule?.id, 'quarantine-out', 'by the quarantine rule');
    t.equal((await trace('tcp 10.78.2.21:40000 -> 10.78.3.31:5432')).verdict, 'allow', 'app -> db is untouched');
    const w = (await call('GET', '/v1/workloads')).body.workloads.find((x: { name: string }) => x.name === 'web-1');
    t.match(w.dynamicTags[0], { tag: 'quarantine', reason: 'malware found' });
    t.ok(w.dynamicTags[0].expiresAt > Date.now(), 'with its expiry');
    t.equal((await call('POST', '/v1/workloads/web-1/tags', { add: ['quarantine'], reason: 'malware found', ttl: '1s', by: 'anti-malware' })).status, 200, 'and again with a second to live');
    await until('the tag to expire', async () => (await trace('tcp 10.78.1.11:40000 -> 10.78.2.21:8080')).verdict === 'allow');
    t.pass('after the TTL, web -> app is allowed again');
    const entries = audit();
    t.match(entries.find((e) => e.action === 'tag.added'), { workload: 'web-1', tag: 'quarantine', reason: 'malware found', by: 'anti-malware (unix-socket)' }, 'audit: added, by whom and why');
    t.match(entries.find((e) => e.action === 'tag.expired'), { workload: 'web-1', tag: 'quarantine', by: 'ttl' }, 'audit: expired');
    t.equal((await call('POST', '/v1/workloads/web-1/tags', { remove: ['web'], reason: 'r' })).status, 409, 'a tag of the document cannot be removed by the API');
  });

  t.test('a broken edit of the watched config file is refused and counted', async (t) => {
    const before = (await call('GET', '/v1/status')).body;
    writeFileSync(policyFile, 'default: sometimes\n');
    await until('the failure to be reported', async () => (await call('GET', '/v1/status')).body.applyFailures === before.applyFailures + 1);
    const s = (await call('GET', '/v1/status')).body;
    t.equal(s.generation, before.generation, 'the running policy stays');
    t.match(s.lastError.problems[0], { path: 'default', code: 'bad-value' }, 'status says what is wrong');
    const metrics = await (await fetch(metricsUrl)).text();
    t.match(metrics, /^tapwall_policy_apply_failures_total 1$/m, 'and a counter says it happened');
    writeFileSync(policyFile, POLICY.replace('tcp/5432', 'tcp/5433'));
    await until('the fixed file to be applied', async () => (await call('GET', '/v1/status')).body.generation === before.generation + 1);
    t.equal((await trace('tcp 10.78.2.21:40000 -> 10.78.3.31:5433')).verdict, 'allow', 'a valid edit is applied');
    t.match(audit().filter((e) => e.by === 'file').map((e) => e.action), ['policy.refused', 'policy.applied'], 'both in the audit log');
  });

  t.test('the CLI', async (t) => {
    const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args, '--api-socket', socket], { encoding: 'utf8' });
    const status = run('status');
    t.equal(status.status, 0);
    t.match(status.stdout, /twc-web1\s+web-1\s+tap\s+up/, 'status lists the ports');
    const cpus = native().threadCpus(0);
    if (cpus.length >= 2) t.match(status.stdout, new RegExp(`forwarding thread on CPU ${cpus[cpus.length - 1]}, tapwall's other threads on ${cpus.slice(0, -1).join(',')}`), 'status says where the threads run');
    else t.notMatch(status.stdout, /forwarding thread on CPU/, 'one CPU: nothing placed, and status says nothing of it');
    // Placed or not, the forwarding thread goes first: lowered priorities only where there is no CPU of its own.
    if (cpus.length >= 2) t.notMatch(status.stdout, /forwarding thread first/, 'placed: no priorities lowered');
    else t.match(status.stdout, /forwarding thread first: tapwall's other threads at nice 19/, 'not placed: the other threads at a lower priority');
    const tag = run('tag', 'db-1', '+quarantine', '--reason', 'scan found a rootkit', '--by', 'edr');
    t.equal(tag.status, 0, tag.stderr);
    t.match(tag.stdout, /db-1: tags now db, quarantine/);
    t.equal((await trace('tcp 10.78.2.21:40000 -> 10.78.3.31:5433')).verdict, 'drop', 'db-1 is quarantined');
    const stale = run('policy', 'apply', policyFile, '--if-revision', '1');
    t.equal(stale.status, 2, 'policy apply with a stale revision exits 2');
    t.match(stale.stderr, /stale-revision/);
    const apply = run('policy', 'apply', policyFile);
    t.equal(apply.status, 0, apply.stderr);
    t.match(apply.stdout, /applied: revision \d+/);
    // A text not in force yet (a comment added) is loaded: the answer and the status say how long that took.
    const edited = join(dir, 'policy-edited.yaml');
    writeFileSync(edited, `${readFileSync(policyFile, 'utf8')}# reviewed\n`);
    const applyEdited = run('policy', 'apply', edited);
    t.equal(applyEdited.status, 0, applyEdited.stderr);
    t.match(applyEdited.stdout, /applied: revision \d+, generation \d+, \d+ rules, loaded and validated in [\d.]+ ms, compiled in [\d.]+ ms/, 'a new text: with how long its load and compile took');
    t.match(run('status').stdout, /last applied \S+ \(loaded in [\d.]+ ms, compiled in [\d.]+ ms\)/, 'and the status says the same of the last apply');
    const rules = JSON.parse(run('rules', '--json').stdout) as { rules: Array<{ id: string }> };
    t.same(rules.rules.map((r) => r.id), ['quarantine-out', 'quarantine-in', 'web-to-app', 'app-to-db'], 'rules lists the running rules');
    t.equal(run('tag', 'db-1', 'quarantine', '--reason', 'r').status, 2, 'a change without + or - is a usage error');
  });

  t.test('run-time tags survive a restart', async (t) => {
    await stop();
    await start();
    const w = (await call('GET', '/v1/workloads')).body.workloads.find((x: { name: string }) => x.name === 'db-1');
    t.same(w.dynamicTags.map((d: { tag: string }) => d.tag), ['quarantine'], 'db-1 is still quarantined');
    t.equal((await trace('tcp 10.78.2.21:40000 -> 10.78.3.31:5433')).verdict, 'drop', 'and the policy says so');
    const untag = await call('POST', '/v1/workloads/db-1/tags', { remove: ['quarantine'], reason: 'cleaned' });
    t.equal(untag.status, 200);
    t.equal((await trace('tcp 10.78.2.21:40000 -> 10.78.3.31:5433')).verdict, 'allow', 'lifted');
    await stop();
  });
});

t.test('a token file others can read is refused before anything opens', async (t) => {
  const open = join(dir, 'token-open');
  writeFileSync(open, `${TOKEN}\n`);
  chmodSync(open, 0o644);
  const r = spawnSync(process.execPath, [cli, 'run', '--config', policyFile, '--state-dir', join(dir, 'state-open'), '--api-listen', '127.0.0.1:0', '--api-token-file', open], { encoding: 'utf8', timeout: 20_000 });
  t.equal(r.status, 1, 'tapwall run exits with an error');
  t.match(r.stderr, /token-open: the API token file can be read by others \(mode 0644\); make it readable by its owner only/, 'and says why');
  const loud = spawnSync(process.execPath, [cli, 'run', '--config', policyFile, '--state-dir', join(dir, 'state-open'), '--api-listen', '0.0.0.0:0', '--api-token-file', tokenFile, '--metrics', 'nohostport'], { encoding: 'utf8', timeout: 20_000 });
  t.match(loud.stderr, /the API listens beyond loopback over plain HTTP/, 'an API off loopback is warned about');
  t.equal(loud.status, 1, '(and a bad --metrics stops it before any port opens)');
});

t.test('the TCP API over TLS: --api-cert and --api-key', async (t) => {
  const tls = makeTls(mkdtempSync(join(dir, 'tls-')));
  chmodSync(tls.serverKey, 0o600);
  const sock = join(dir, 'tls.sock');
  // Attach mode with the vNICs absent: no devices needed for an API test.
  const d = spawn(process.execPath, [cli, 'run', '--config', policyFile, '--mode', 'attach', '--state-dir', join(dir, 'state-tls'), '--api-socket', sock, '--no-metrics',
    '--api-listen', '127.0.0.1:0', '--api-token-file', tokenFile, '--api-cert', tls.serverCert, '--api-key', tls.serverKey], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { if (d.exitCode === null) d.kill('SIGKILL'); });
  let stderr = '';
  d.stderr!.on('data', (x) => { stderr += String(x); });
  const ready = JSON.parse(await lineReader(d, 15_000)()) as { api: { url: string } };
  t.match(ready.api.url, /^https:\/\/127\.0\.0\.1:\d+$/, 'the API says it is https');
  const status = await apiCall<{ rules: number }>({ socket: sock, url: ready.api.url, tokenFile, caFile: tls.ca }, 'GET', '/v1/status');
  t.equal(status.status, 200, 'a client trusting the CA, with the token, is answered');
  const untrusted = await apiCall({ socket: sock, url: ready.api.url, tokenFile }, 'GET', '/v1/status').then(() => 'answered', (e: NodeJS.ErrnoException) => e.code ?? e.message);
  t.match(untrusted, /SELF_SIGNED|UNABLE_TO_VERIFY|CERT/, `a client that does not trust the certificate stops (${untrusted})`);
  const plain = await apiCall({ socket: sock, url: ready.api.url.replace('https:', 'http:'), tokenFile }, 'GET', '/v1/status').then(() => 'answered', (e: Error) => e.message);
  t.not(plain, 'answered', `plain HTTP to the TLS port gets no answer (${plain})`);
  const cli1 = spawnSync(process.execPath, [cli, 'status', '--api', ready.api.url, '--token-file', tokenFile, '--api-ca', tls.ca, '--json'], { encoding: 'utf8', timeout: 20_000 });
  t.equal(cli1.status, 0, `tapwall status --api https://... --api-ca works (${cli1.stderr.trim()})`);
  const loud = spawnSync(process.execPath, [cli, 'run', '--config', policyFile, '--state-dir', join(dir, 'state-tls2'), '--api-listen', '0.0.0.0:0', '--api-token-file', tokenFile,
    '--api-cert', tls.serverCert, '--api-key', tls.serverKey, '--metrics', 'nohostport'], { encoding: 'utf8', timeout: 20_000 });
  t.notMatch(loud.stderr, /plain HTTP/, 'with TLS, an API off loopback is not warned about as plain HTTP');
  chmodSync(tls.serverKey, 0o644);
  const open = spawnSync(process.execPath, [cli, 'run', '--config', policyFile, '--state-dir', join(dir, 'state-tls2'), '--api-listen', '127.0.0.1:0', '--api-token-file', tokenFile,
    '--api-cert', tls.serverCert, '--api-key', tls.serverKey], { encoding: 'utf8', timeout: 20_000 });
  t.equal(open.status, 1, 'a private key others can read is refused');
  t.match(open.stderr, /the API's private key can be read by others \(mode 0644\)/, 'saying why');
  t.notMatch(stderr, /internal error/, 'no internal error in the daemon');
  d.kill('SIGTERM');
});
