// One policy for many hosts, against a real etcd: hosts here are the real
// sync path (EtcdStore + Controller) driving real data planes on in-memory
// ports, in this process (the namespace test runs whole daemons). Shown: the
// data model and compare-and-set writes; each host enforcing only its own
// vNICs with groups over the whole inventory; a quarantine and a policy edit
// reaching every host; fail-static while etcd is unreachable and catching up
// after, also past a compaction; a member of three killed; a dead host's
// lease expiring; bad keys refused with their location; a restarted host.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EtcdCluster, CuttableProxy } from '../bench/etcd.js';
import { sendThrough, type SendResult } from './memlab.js';
import { until, untilValue } from './fixtures.js';
import { EtcdStore } from '../src/control/etcdStore.js';
import { Controller } from '../src/control/controller.js';
import { Dataplane } from '../src/datapath/dataplane.js';
import { MemoryPort } from '../src/io/memoryPort.js';
import { policyCompile } from '../src/policy/compile.js';
import { frameBuild } from '../src/packet/build.js';
import { TCP_SYN } from '../src/packet/parse.js';
import { clusterHosts, formatHosts } from '../src/cli/cluster.js';
import { startingPolicy, type Policy } from '../src/policy/model.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const MAC = { web: '02:71:00:00:01:11', app: '02:71:00:00:02:21', db: '02:71:00:00:03:31', out: '02:71:00:00:00:fe' };
const IP = { web: '10.71.1.11', app: '10.71.2.21', db: '10.71.3.31' };

const POLICY = (opts: { appToDb?: boolean; dbHost?: string } = {}) => `
default: drop
workloads:
  web-1: { nic: twq-web1, mac: "${MAC.web}", ips: [${IP.web}], tags: [web], host: hv1 }
  app-1: { nic: twq-app1, mac: "${MAC.app}", ips: [${IP.app}], tags: [app], host: hv1 }
  db-1:  { nic: twq-db1,  mac: "${MAC.db}",  ips: [${IP.db}],  tags: [db],  host: ${opts.dbHost ?? 'hv2'} }
groups:
  web: { tags: [web] }
  app: { tags: [app] }
  db: { tags: [db] }
  quarantined: { tags: [quarantine] }
sections:
  - name: emergency
    rules:
      - { id: quarantine-out, from: quarantined, to: any, action: drop }
      - { id: quarantine-in, from: any, to: quarantined, action: drop }
  - name: app
    rules:
      - { id: web-to-app, from: web, to: app, services: [tcp/8080], action: allow }
${opts.appToDb === false ? '' : '      - { id: app-to-db, from: app, to: db, services: [tcp/5432], action: allow }'}
`;

const EMPTY: Policy = { ...startingPolicy(), source: '(empty)' };

/** A host: the real store and controller, a data plane on in-memory ports with an uplink. */
class SimHost {
  readonly ports = new Map<string, MemoryPort>();
  readonly dp: Dataplane;
  readonly controller: Controller;
  readonly store: EtcdStore;
  readonly audit: string;
  constructor(readonly name: string, url: string, leaseSeconds?: number) {
    this.store = new EtcdStore({ url, leaseSeconds });
    this.dp = new Dataplane(policyCompile(EMPTY), [{ name: `twq-up-${name}`, mode: 'tap', workload: null }], {
      flowCapacity: 4096,
      portOpener: (s) => { const p = new MemoryPort(s.name); this.ports.set(s.name, p); return p; },
    });
    this.audit = join(mkdtempSync(join(tmpdir(), 'tw-ch-')), 'audit.jsonl');
    this.controller = new Controller(this.store, this.dp, { host: name, auditPath: this.audit, onApplied: (rec, vnics) => this.store.updateHost({ enforcing: rec.revision, vnics }) });
    this.controller.storeName = 'etcd';
  }
  async start(): Promise<this> {
    await this.store.open();
    await this.controller.start();
    await this.store.registerHost(this.name, { vnics: this.dp.nics, enforcing: this.controller.revision.policy });
    return this;
  }
  get uplink(): string { return `twq-up-${this.name}`; }
  send(port: string, frame: Uint8Array): SendResult { return sendThrough(this.dp, this.ports, port, frame); }
  async stop(): Promise<void> { this.controller.stop(); this.dp.stop(); await this.store.close(); }
}

let nextSport = 40000;
/** A new connection's first packet (a fresh source port each time, so no earlier connection covers it). */
const syn = (from: keyof typeof IP, to: keyof typeof IP, dport: number, dstMac: string = MAC[to]) =>
  frameBuild({ family: 4, proto: 6, srcMac: MAC[from], dstMac, src: IP[from], dst: IP[to], sport: nextSport++, dport, flags: TCP_SYN });
/** The same frame as it arrives at the other host from the physical network (the sender's MAC kept). */
const fromWire = syn;

/** A client of the store alone, like `tapwall policy apply --store` and `tapwall tag --store`. */
async function client(url: string): Promise<EtcdStore> {
  const s = new EtcdStore({ url });
  await s.open();
  return s;
}

t.test('one etcd, three hosts', async (t) => {
  const etcd = new EtcdCluster(1);
  await etcd.start();
  const hosts: SimHost[] = [];
  const proxy = new CuttableProxy(etcd.members[0].client);
  const cli = await client(etcd.url);
  t.teardown(async () => { for (const h of hosts) await h.stop(); await cli.close(); await proxy.cut(); await etcd.stop(); });
  const applied = await cli.putPolicy(POLICY(), 0);
  t.ok(applied.ok, 'the policy was written to etcd');

  await t.test('the data model: one key per object, compare-and-set writes', async (t) => {
    const keys = (await cli.client.getAll().prefix('/tapwall/').keys()).sort();
    t.ok(keys.includes('/tapwall/policy/workloads/db-1') && keys.includes('/tapwall/policy/groups/quarantined') && keys.includes('/tapwall/policy/sections/emergency'), 'workloads, groups and sections are keys of their own');
    t.same(keys.filter((k) => k.startsWith('/tapwall/policy/rules/app/')), ['/tapwall/policy/rules/app/000000', '/tapwall/policy/rules/app/000001'], 'and each rule, by position');
    const before = await cli.client.getAll().prefix('/tapwall/policy/').exec();
    const mod = (k: string, r = before) => r.kvs.find((kv) => kv.key.toString() === k)?.mod_revision;
    const rev = (await cli.read()).policy.revision;
    const edited = POLICY().replace('tcp/5432', 'tcp/5433');
    const other = await client(etcd.url);
    const [a, b] = await Promise.all([cli.putPolicy(edited, rev), other.putPolicy(POLICY().replace('tcp/8080', 'tcp/8081'), rev)]);
    await other.close();
    t.same([a.ok, b.ok].sort(), [false, true], 'two writers with the same revision: exactly one wins');
    const winner = a.ok ? 'a' : 'b';
    const after = await cli.client.getAll().prefix('/tapwall/policy/').exec();
    const changedKeys = after.kvs.filter((kv) => kv.mod_revision !== mod(kv.key.toString())).map((kv) => kv.key.toString()).sort();
    t.same(changedKeys, ['/tapwall/policy/epoch', winner === 'a' ? '/tapwall/policy/rules/app/000001' : '/tapwall/policy/rules/app/000000'], "the winner's edit wrote the one rule it changed (and the epoch), nothing else");
    const back = await cli.putPolicy(POLICY(), null);
    t.ok(back.ok, 'and the policy is put back');
  });

  const hv1 = await new SimHost('hv1', etcd.url).start();
  const hv2 = await new SimHost('hv2', etcd.url).start();
  hosts.push(hv1, hv2);

  await t.test('each host enforces its own vNICs, with groups over the whole inventory', async (t) => {
    t.same(hv1.dp.nics.sort(), ['twq-app1', 'twq-web1'], 'hv1 has web-1 and app-1');
    t.same(hv2.dp.nics, ['twq-db1'], 'hv2 has db-1');
    t.same(hv1.send('twq-app1', syn('app', 'db', 5432)), { outcome: 'forward', to: [hv1.uplink] }, 'app-1 -> db-1 leaves hv1 by the uplink (its egress allows it: db-1 is in group db though on hv2)');
    t.same(hv2.send(hv2.uplink, fromWire('app', 'db', 5432)), { outcome: 'forward', to: ['twq-db1'] }, 'and hv2 delivers it to db-1 (its ingress allows it)');
    t.same(hv2.send(hv2.uplink, fromWire('web', 'db', 5432)), { outcome: 'policy', to: [] }, 'web-1 -> db-1 is denied at db-1 on hv2');
    t.same(hv1.send('twq-web1', syn('web', 'db', 5432)), { outcome: 'policy', to: [] }, 'and at web-1 on hv1 already');
  });

  await t.test('a quarantine set through one host reaches the others', async (t) => {
    const started = performance.now();
    await hv1.controller.changeTags('db-1', { add: ['quarantine'], reason: 'malware found', by: 'test', ttlSeconds: null });
    await until('hv2 to enforce the quarantine', () => hv2.controller.policy.policy.workloads.get('db-1')!.tags.includes('quarantine'), 5000);
    t.comment(`hv2 enforced db-1's quarantine ${(performance.now() - started).toFixed(1)} ms after the call on hv1 began`);
    t.same(hv2.send(hv2.uplink, fromWire('app', 'db', 5432)), { outcome: 'policy', to: [] }, 'hv2 drops what reaches db-1 (quarantine-in)');
    t.same(hv1.send('twq-app1', syn('app', 'db', 5432)), { outcome: 'policy', to: [] }, 'and hv1 what its VMs send to db-1');
    t.ok(readFileSync(hv1.audit, 'utf8').includes('"tag.added"'), 'the host that took the call wrote it to its audit log');
  });

  await t.test('a policy edit reaches every host', async (t) => {
    await hv1.controller.changeTags('db-1', { remove: ['quarantine'], reason: 'clean', by: 'test', ttlSeconds: null });
    const r = await cli.putPolicy(POLICY({ appToDb: false }), null);
    t.ok(r.ok, 'an edit applied from a third machine');
    await until('both hosts to apply it', () => hv1.controller.revision.policy >= r.revision && hv2.controller.revision.policy >= r.revision, 5000);
    t.same(hv2.send(hv2.uplink, fromWire('app', 'db', 5432)), { outcome: 'policy', to: [] }, 'app -> db is denied on hv2 now');
    t.same(hv1.send('twq-app1', syn('app', 'db', 5432)), { outcome: 'policy', to: [] }, 'and on hv1');
    t.ok((await cli.putPolicy(POLICY(), null)).ok, 'put back');
    await until('both hosts to apply it back', () => hv1.controller.policy.rules.length === 4 && hv2.controller.policy.rules.length === 4, 5000);
  });

  await t.test('fail-static: a host cut off from etcd keeps enforcing, and catches up when it is back', async (t) => {
    await proxy.start();
    const hv3 = await new SimHost('hv3', proxy.url).start();
    hosts.push(hv3);
    // hv3 serves no workload: what it enforces is read from its compiled policy.
    const tagsOf = (h: SimHost) => h.controller.policy.policy.workloads.get('web-1')!.tags;
    await proxy.cut();
    await until('hv3 to notice', () => !hv3.store.connected, 10_000);
    t.notOk(hv3.store.connected, 'hv3 says it is disconnected');
    await hv1.controller.changeTags('web-1', { add: ['quarantine'], reason: 'while hv3 is away', by: 'test', ttlSeconds: null });
    await until('hv2 to apply it', () => tagsOf(hv2).includes('quarantine'), 5000);
    t.notOk(tagsOf(hv3).includes('quarantine'), 'hv3 still enforces the last policy it had (nothing half-applied)');
    t.equal(hv3.controller.applyFailures, 0, 'and nothing failed there');
    // Make the revision hv3 would resume from unavailable: more changes, then a compaction.
    for (let i = 0; i < 5; i++) await hv1.controller.changeTags('app-1', { add: [`mark${i}`], reason: 'churn', by: 'test', ttlSeconds: null });
    const rev = Number((await cli.client.get('/tapwall/policy/epoch').exec()).header.revision);
    await cli.client.kv.compact({ revision: String(rev), physical: true });
    const restartsBefore = hv3.store.watchRestarts;
    await proxy.restore();
    await until('hv3 to catch up', () => tagsOf(hv3).includes('quarantine') && hv3.store.connected, 15_000);
    t.ok(hv3.controller.policy.policy.workloads.get('app-1')!.tags.includes('mark4'), 'hv3 has every change made while it was away (the history was compacted: it read everything again)');
    // A reconnect loop would read again and again: wait until no full read has happened for two seconds.
    let last = hv3.store.watchRestarts, since = Date.now();
    await until('the store to settle (no full read for 2 s)', () => {
      if (hv3.store.watchRestarts !== last) { last = hv3.store.watchRestarts; since = Date.now(); }
      return Date.now() - since >= 2000;
    }, 20_000);
    const reads = hv3.store.watchRestarts - restartsBefore;
    t.ok(reads >= 1 && reads <= 6, `and it settled after ${reads} full reads (two per watch at most): no reconnect loop`);
    await hv1.controller.changeTags('web-1', { remove: ['quarantine'], reason: 'back', by: 'test', ttlSeconds: null });
    await until('hv3 to follow the next change live', () => !tagsOf(hv3).includes('quarantine'), 5000);
    await until('hv2 to follow it too (the next test counts its applies)', () => !tagsOf(hv2).includes('quarantine'), 5000);
  });

  await t.test('bad input in etcd is refused with its key; the running policy stays', async (t) => {
    const gen = hv2.controller.generation;
    await cli.client.put('/tapwall/policy/groups/broken').value('{not json');
    await until('hv2 to refuse it', () => hv2.controller.applyFailures > 0, 5000);
    t.match(hv2.controller.lastError?.problems[0], { file: '/tapwall/policy/groups/broken', code: 'bad-key' }, 'the problem names the key');
    t.equal(hv2.controller.generation, gen, 'nothing was applied');
    t.same(hv2.send(hv2.uplink, fromWire('app', 'db', 5432)), { outcome: 'forward', to: ['twq-db1'] }, 'app -> db still allowed by the running policy');
    await cli.client.delete().key('/tapwall/policy/groups/broken');
    await cli.client.put('/tapwall/policy/rules/app/000002').value(JSON.stringify({ id: 'oops', from: 'nosuchgroup', to: 'any', action: 'allow' }));
    await until('hv2 to refuse the rule', () => hv2.controller.lastError?.problems.some((p) => p.file === '/tapwall/policy/rules/app/000002') ?? false, 5000);
    t.match(hv2.controller.lastError!.problems.find((p) => p.file === '/tapwall/policy/rules/app/000002'), { code: 'unknown-group', path: 'sections[1].rules[2].from' }, 'an unknown group in a rule key: located at that key');
    t.ok(readFileSync(hv2.audit, 'utf8').includes('"policy.refused"'), 'and recorded in the audit log');
    await cli.client.delete().key('/tapwall/policy/rules/app/000002');
    await until('hv2 to apply the good policy again', () => hv2.controller.lastApply!.generation > gen, 5000);
    t.pass('deleting the bad keys lets the policy apply again');
  });

  await t.test('a host restarted reads everything again; quarantine tags survive', async (t) => {
    await hv1.controller.changeTags('db-1', { add: ['quarantine'], reason: 'before the restart', by: 'test', ttlSeconds: null });
    await hv2.stop();
    hosts.splice(hosts.indexOf(hv2), 1);
    const again = await new SimHost('hv2', etcd.url).start();
    hosts.push(again);
    t.ok(again.controller.policy.policy.workloads.get('db-1')!.tags.includes('quarantine'), 'the restarted host starts with the quarantine in force');
    t.same(again.send(again.uplink, fromWire('app', 'db', 5432)), { outcome: 'policy', to: [] }, 'and enforces it');
  });

  await t.test('a host whose lease expires is reported dead', async (t) => {
    const hv4 = await new SimHost('hv4', etcd.url, 2).start();
    t.ok((await clusterHosts({ store: etcd.url })).hosts.find((h) => h.host === 'hv4')?.alive, 'hv4 is alive');
    const view = await clusterHosts({ store: etcd.url });
    t.match(view.hosts.find((h) => h.host === 'hv1'), { alive: true, workloads: 2, behind: 0, behindSeconds: null }, 'hv1: alive, its two workloads, current');
    // hv4 stops applying (its registration stays): a policy edit leaves it behind.
    hv4.controller.stop();
    const edit = await cli.putPolicy(POLICY().replace('tcp/8080', 'tcp/8082'), null);
    t.ok(edit.ok, 'a policy edit');
    await until('hv1 to apply the edit', () => hv1.controller.revision.policy === edit.revision, 5000);
    // hv1 tells etcd what it enforces a moment after it applies (debounced): wait for that.
    const both = await untilValue('hv1 reported current', () => clusterHosts({ store: etcd.url }), (v) => v.hosts.find((h) => h.host === 'hv1')?.behind === 0);
    const lagging = both.hosts.find((h) => h.host === 'hv4')!;
    t.ok(lagging.behind !== null && lagging.behind >= edit.revision - (lagging.enforcing ?? 0), `hv4 is ${lagging.behind} revisions behind`);
    t.ok(lagging.behindSeconds !== null && lagging.behindSeconds >= 0 && lagging.behindSeconds < 60, `and the edit it lacks has waited ${lagging.behindSeconds} s`);
    t.match(both.hosts.find((h) => h.host === 'hv1'), { behind: 0 }, 'hv1 is current');
    t.match(formatHosts(both), /hv4\s+alive.*\d+ revisions, [\d.]+ s/, '`tapwall hosts` shows both');
    const back = await cli.putPolicy(POLICY(), null);
    t.ok(back.ok, 'put back');
    await until('hv1 to apply it', () => hv1.controller.revision.policy === back.revision, 5000);
    // A crash: the client goes away without revoking its lease.
    hv4.controller.stop();
    hv4.store.abandon();
    hosts.push(hv4);
    await until('hv4 to be gone', async () => !(await clusterHosts({ store: etcd.url })).hosts.some((h) => h.host === 'hv4' && h.alive), 8000);
    t.pass('after its lease ran out, hv4 is no longer alive');
  });
});

t.test('three etcd members: one killed, the hosts carry on', async (t) => {
  const etcd = new EtcdCluster(3);
  await etcd.start();
  const hv1 = await (async () => { const c = await client(etcd.url); await c.putPolicy(POLICY(), null); await c.close(); return new SimHost('hv1', etcd.url).start(); })();
  const hv2 = await new SimHost('hv2', etcd.url).start();
  t.teardown(async () => { await hv1.stop(); await hv2.stop(); await etcd.stop(); });
  await etcd.kill(0);
  const started = performance.now();
  await hv1.controller.changeTags('db-1', { add: ['quarantine'], reason: 'member down', by: 'test', ttlSeconds: null });
  await until('hv2 to enforce it', () => hv2.controller.policy.policy.workloads.get('db-1')!.tags.includes('quarantine'), 10_000);
  t.comment(`with one member of three killed, a quarantine reached hv2 in ${(performance.now() - started).toFixed(0)} ms`);
  t.same(hv2.send(hv2.uplink, fromWire('app', 'db', 5432)), { outcome: 'policy', to: [] }, 'hv2 enforces the quarantine set with a member down');
  await etcd.restart(0);
  await hv1.controller.changeTags('db-1', { remove: ['quarantine'], reason: 'member back', by: 'test', ttlSeconds: null });
  await until('hv2 to follow', () => !hv2.controller.policy.policy.workloads.get('db-1')!.tags.includes('quarantine'), 10_000);
  t.pass('the member rejoined and changes keep flowing');
});

t.test('etcd over TLS with client certificates', async (t) => {
  const etcd = new EtcdCluster(1, { tls: true });
  await etcd.start();
  t.teardown(() => etcd.stop());
  const tls = etcd.tls!;
  const store = new EtcdStore({ url: etcd.url, ca: tls.ca, cert: tls.clientCert, key: tls.clientKey });
  await store.open();
  t.ok((await store.putPolicy(POLICY(), null)).ok, 'a policy written over TLS with a client certificate');
  t.equal(((await store.read()).policy.data as { workloads: Record<string, unknown> }).workloads['db-1'] !== undefined, true, 'and read back');
  await store.close();
  const noCert = new EtcdStore({ url: etcd.url, ca: tls.ca });
  await t.rejects(noCert.open(), 'without a client certificate the server refuses');
  await noCert.close();
  const cli = spawnSync(process.execPath, [join(root, 'bin/tapwall.js'), 'policy', 'get', '--store', etcd.url, '--etcd-ca', tls.ca, '--etcd-cert', tls.clientCert, '--etcd-key', tls.clientKey], { encoding: 'utf8' });
  t.equal(cli.status, 0, `tapwall policy get --store with --etcd-ca/--etcd-cert/--etcd-key ${cli.stderr}`);
  t.match(cli.stdout, /db-1:/, 'prints the policy');
});
