// Many hosts, one policy, with real daemons and real traffic: two
// "hypervisors" (each a `tapwall run --store etcd://... --host NAME` with its
// VMs, network namespaces on its TAP devices), their uplinks joined by a
// shared "physical" network (a bridge). A VM on host A talks to a VM on host B
// through A's egress check and B's ingress check. Shown: allowed and denied
// traffic across hosts; a quarantine set through host A's API cuts the VM's
// open connection on host B; a policy edit from a third machine reaches both;
// `tapwall hosts` sees both, current; a VM moved from A to B keeps its open
// connection (its flows handed over through etcd). Everything is removed at
// the end, also on failure.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, SERVERS, TCP_CONNECT, TCP_STREAM, lineReader, sh } from '../tools/lab.js';
import { apiCall } from '../src/cli/client.js';
import { EtcdCluster } from '../bench/etcd.js';
import { collect, echoes, errors, until, untilValue } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'bin/tapwall.js');

const VMS = {
  web: { name: 'web-1', ns: 'twk-web', nic: 'twk-web1', mac: '02:72:00:00:01:11', ip: '10.72.0.11', host: 'ha' },
  app: { name: 'app-1', ns: 'twk-app', nic: 'twk-app1', mac: '02:72:00:00:02:21', ip: '10.72.0.21', host: 'hb' },
  db: { name: 'db-1', ns: 'twk-db', nic: 'twk-db1', mac: '02:72:00:00:03:31', ip: '10.72.0.31', host: 'hb' },
} as const;

const policy = (opts: { webPort?: number; webOn?: string; webNic?: string } = {}) => `
default: drop
workloads:
  web-1: { nic: ${opts.webNic ?? VMS.web.nic}, mac: "${VMS.web.mac}", ips: [${VMS.web.ip}], tags: [web], host: ${opts.webOn ?? 'ha'} }
  app-1: { nic: ${VMS.app.nic}, mac: "${VMS.app.mac}", ips: [${VMS.app.ip}], tags: [app], host: hb }
  db-1:  { nic: ${VMS.db.nic},  mac: "${VMS.db.mac}",  ips: [${VMS.db.ip}],  tags: [db],  host: hb }
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
      - { id: web-to-app, from: web, to: app, services: [tcp/${opts.webPort ?? 8080}], action: allow }
      - { id: app-to-db, from: app, to: db, services: [tcp/5432], action: allow }
`;

t.test('two hypervisors on one etcd, VMs talking across them', async (t) => {
  const lab = new Lab();
  const etcd = new EtcdCluster(1);
  const daemons: ChildProcess[] = [];
  t.teardown(async () => {
    for (const d of daemons) if (d.exitCode === null) d.kill('SIGKILL');
    lab.cleanup();
    for (const l of ['twk-br', 'twk-ua', 'twk-ub']) sh(['ip', 'link', 'del', l], { allowFail: true });
    await etcd.stop();
  });
  await etcd.start();
  const dir = mkdtempSync(join(tmpdir(), 'tw-cl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'policy.yaml');
  const store = ['--store', etcd.url];
  const apply = (text: string) => {
    writeFileSync(file, text);
    const r = spawnSync(process.execPath, [cli, 'policy', 'apply', file, ...store], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`policy apply failed: ${r.stderr}`);
    return r.stdout;
  };
  t.match(apply(policy()), /applied to etcd:.*revision \d+/, 'the policy is loaded once, into etcd');

  // The physical network: a bridge, each hypervisor's uplink a veth into it.
  sh(['ip', 'link', 'add', 'twk-br', 'type', 'bridge']);
  sh(['ip', 'link', 'set', 'twk-br', 'up']);
  for (const h of ['a', 'b']) {
    sh(['ip', 'link', 'add', `twk-u${h}`, 'type', 'veth', 'peer', 'name', `twk-u${h}p`]);
    for (const dev of [`twk-u${h}`, `twk-u${h}p`]) {
      sh(['ethtool', '-K', dev, 'tx', 'off', 'rx', 'off', 'tso', 'off', 'gso', 'off', 'gro', 'off'], { allowFail: true });
      sh(['sysctl', '-qw', `net.ipv6.conf.${dev}.disable_ipv6=1`], { allowFail: true });
    }
    sh(['ip', 'link', 'set', `twk-u${h}p`, 'master', 'twk-br']);
    for (const dev of [`twk-u${h}`, `twk-u${h}p`]) sh(['ip', 'link', 'set', dev, 'up']);
  }

  const start = async (host: 'ha' | 'hb') => {
    const sock = join(dir, `${host}.sock`);
    const d = spawn(process.execPath, [cli, 'run', ...store, '--host', host, '--uplink', host === 'ha' ? 'twk-ua' : 'twk-ub',
      '--state-dir', join(dir, host), '--api-socket', sock, '--no-metrics'], { stdio: ['ignore', 'pipe', 'pipe'] });
    daemons.push(d);
    const ready = JSON.parse(await lineReader(d, 20_000)()) as { ports: Array<{ name: string }>; host: string };
    return { d, api: { socket: sock }, ready };
  };
  const ha = await start('ha');
  const hb = await start('hb');
  t.same(ha.ready.ports.map((p) => p.name).sort(), ['twk-ua', 'twk-web1'], 'host A opened its uplink and web-1 only');
  t.same(hb.ready.ports.map((p) => p.name).sort(), ['twk-app1', 'twk-db1', 'twk-ub'], 'host B its uplink, app-1 and db-1');
  for (const vm of Object.values(VMS)) lab.host(vm.ns, vm.nic, vm.mac, [`${vm.ip}/24`], [], { ipv6: false });
  const servers = [lab.spawnIn(VMS.app.ns, SERVERS, ['app', '8080', '8081']), lab.spawnIn(VMS.db.ns, SERVERS, ['db', '5432'])];
  await Promise.all(servers.map((s) => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('echo servers did not start')), 10_000);
    s.stdout!.on('data', (d) => { if (String(d).includes('ready')) { clearTimeout(timer); resolve(); } });
  })));
  const tcp = (ns: string, host: string, port: number, ms = 2000) => lab.runIn(ns, TCP_CONNECT, [host, String(port), String(ms)]);

  await t.test('across hosts: A egress, B ingress', async (t) => {
    t.equal(tcp(VMS.web.ns, VMS.app.ip, 8080), 'connected', 'web-1 (host A) -> app-1 (host B) tcp/8080 is allowed');
    t.equal(tcp(VMS.web.ns, VMS.db.ip, 5432, 1500), 'timeout', 'web-1 (host A) -> db-1 (host B) is denied');
    t.equal(tcp(VMS.app.ns, VMS.db.ip, 5432), 'connected', 'app-1 -> db-1 on host B');
    const hosts = spawnSync(process.execPath, [cli, 'hosts', ...store], { encoding: 'utf8' });
    t.match(hosts.stdout, /ha\s+alive\s+1\s+1\s+\d+\s+current/, '`tapwall hosts`: A alive, one vNIC, current');
    t.match(hosts.stdout, /hb\s+alive\s+2\s+2\s+\d+\s+current/, 'B alive, two vNICs, current');
  });

  await t.test("a quarantine set through host A's API cuts the VM's open connection on host B", async (t) => {
    // Two open connections of app-1: from web-1 (host A: either host may cut it first, A at web-1's egress or
    // B at app-1's ingress) and to db-1 (both on host B: only B can cut it, so B's own enforcement shows).
    const stream = collect(lab.spawnIn(VMS.web.ns, TCP_STREAM, [VMS.app.ip, '8080', '20', '8000']));
    const local = collect(lab.spawnIn(VMS.app.ns, TCP_STREAM, [VMS.db.ip, '5432', '20', '8000']));
    await until('the connections to carry data', () => echoes(stream.lines) >= 5 && echoes(local.lines) >= 5, 5000);
    const called = Date.now();
    const r = await apiCall(ha.api, 'POST', '/v1/workloads/app-1/tags', { add: ['quarantine'], reason: 'malware on app-1', by: 'test' });
    t.equal(r.status, 200, "host A's API took the tag for app-1, a VM of host B");
    await until('both connections to end', () => errors(stream.lines).length > 0 && errors(local.lines).length > 0, 8000);
    t.match(errors(stream.lines)[0], /^error ECONNRESET /, 'web-1 -> app-1 (across the hosts) is reset');
    t.match(errors(local.lines)[0], /^error ECONNRESET /, 'app-1 -> db-1 (within host B) is reset, by host B');
    t.comment(`the connections ended ${Number(errors(stream.lines)[0].split(' ').at(-1)) - called} ms and ${Number(errors(local.lines)[0].split(' ').at(-1)) - called} ms after the call on host A`);
    const status = await untilValue('host B to count the cut', async () => (await apiCall<{ ports: Array<{ name: string; outcomes: Record<string, number> }> }>(hb.api, 'GET', '/v1/status')).body, (s) => (s.ports.find((p) => p.name === VMS.app.nic)?.outcomes.cut ?? 0) > 0);
    t.ok(status, "host B counted cut packets at app-1's vNIC");
    t.equal(tcp(VMS.web.ns, VMS.app.ip, 8080, 1000), 'timeout', 'and new connections to app-1 fail');
    await apiCall(hb.api, 'POST', '/v1/workloads/app-1/tags', { remove: ['quarantine'], reason: 'clean', by: 'test' });
    await until('app-1 to be reachable again', () => tcp(VMS.web.ns, VMS.app.ip, 8080, 500) === 'connected', 8000);
    t.pass("lifted through host B's API, effective from host A's side too");
  });

  await t.test('a policy edit from a third machine reaches both hosts', async (t) => {
    apply(policy({ webPort: 8081 }));
    await until('web-1 -> app-1:8081 to be allowed', () => tcp(VMS.web.ns, VMS.app.ip, 8081, 500) === 'connected', 8000);
    t.equal(tcp(VMS.web.ns, VMS.app.ip, 8080, 1000), 'timeout', '8080 is no longer allowed');
    apply(policy());
    await until('8080 to be allowed again', () => tcp(VMS.web.ns, VMS.app.ip, 8080, 500) === 'connected', 8000);
  });

  await t.test('a VM moved from host A to host B keeps its open connection (its flows handed over)', async (t) => {
    const stream = collect(lab.spawnIn(VMS.web.ns, TCP_STREAM, [VMS.app.ip, '8080', '50', '20000']));
    await until('the connection to carry data', () => echoes(stream.lines) >= 5, 5000);
    // The orchestrator moves web-1: its record now says host B, with B's TAP for it.
    apply(policy({ webOn: 'hb', webNic: 'twk-web9' }));
    const status = (api: { socket: string }) => apiCall<{ ports: Array<{ name: string; up: boolean }> }>(api, 'GET', '/v1/status');
    await until("host B to open web-1's new vNIC", async () => (await status(hb.api)).body.ports.some((p) => p.name === 'twk-web9' && p.up), 8000);
    await until('host A to let web-1 go', async () => !(await status(ha.api)).body.ports.some((p) => p.name === VMS.web.nic), 8000);
    // The VM's NIC is now B's TAP: the same MAC and address, in the same namespace (a live migration's end).
    sh(['ip', 'link', 'set', 'twk-web9', 'netns', VMS.web.ns]);
    sh(['ip', '-n', VMS.web.ns, 'link', 'set', 'twk-web9', 'address', VMS.web.mac]);
    sh(['ip', '-n', VMS.web.ns, 'addr', 'add', `${VMS.web.ip}/24`, 'dev', 'twk-web9']);
    sh(['ip', '-n', VMS.web.ns, 'link', 'set', 'twk-web9', 'up']);
    const moved = Date.now();
    await until('the connection to carry data again through host B', () => echoes(stream.lines, moved) >= 5, 12_000);
    t.same(errors(stream.lines), [], 'the connection was never reset or closed');
    const flows = await apiCall<{ flows: Array<{ from: string; to: string; state: string }> }>(hb.api, 'GET', '/v1/flows?workload=web-1');
    t.ok(flows.body.flows.some((f) => f.from === 'web-1' && f.to === 'app-1' && f.state === 'established'), "host B tracks web-1's connection as established (taken over, not picked up mid-stream)");
    t.equal(tcp(VMS.web.ns, VMS.db.ip, 5432, 1500), 'timeout', 'web-1 is still denied db-1, now at host B');
  });
});
