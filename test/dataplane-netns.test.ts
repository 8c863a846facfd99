// The data plane for real: `tapwall run` owns TAP devices whose kernel sides
// are the NICs of network namespaces ("VMs" with real TCP/IP stacks). With a
// three-tier policy it shows allowed TCP, UDP and ping completing, denied ones
// failing (drop times out, reject fails fast with a reset), replies passing,
// a spoofed source sent with raw-socket dropped and counted, IPv6 like IPv4,
// in every port mode (TAP, TAP with virtio-net offload, AF_PACKET on veths,
// libpcap on veths),
// every received frame counted in exactly one outcome, SIGHUP reloads and
// SIGTERM stops. Namespaces and links are removed at the end, also on failure.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, SERVERS, TCP_BULK, TCP_CLIENT, UDP_CLIENT, lineReader, sh } from '../tools/lab.js';
import { until } from './fixtures.js';
import { OUTCOME_NAMES } from '../src/packet/verdict.js';

const root = fileURLToPath(new URL('..', import.meta.url));

const POLICY = `
default: drop
spoofguard: true
workloads:
  web-1: { nic: twt-web1, mac: "02:77:00:00:01:11", ips: [10.77.1.11, "fd77::1:11"], tags: [web], vlans: [100] }
  app-1: { nic: twt-app1, mac: "02:77:00:00:02:21", ips: [10.77.2.21, "fd77::2:21"], tags: [app], vlans: [100] }
  db-1:  { nic: twt-db1,  mac: "02:77:00:00:03:31", ips: [10.77.3.31, "fd77::3:31"], tags: [db] }
  jump-1: { nic: twt-jump1, mac: "02:77:00:00:09:05", ips: [10.77.9.5, "fd77::9:5"], tags: [admin] }
groups:
  web: { tags: [web] }
  app: { tags: [app] }
  db: { tags: [db] }
  admins: { tags: [admin] }
  servers: { groups: [web, app, db] }
sections:
  - name: infrastructure
    rules:
      - { id: admin-ping, from: admins, to: servers, services: [icmp/echo-request, icmpv6/echo-request], action: allow }
  - name: application
    rules:
      - { id: web-to-app, from: web, to: app, services: [tcp/8080, udp/5353], action: allow }
      - { id: app-to-db, from: app, to: db, services: [tcp/5432], action: allow }
      - { id: web-to-db, from: web, to: db, action: reject }
`;

/** Inside a namespace: count tagged frames (VLAN 100) arriving for UDP ports 5353 and 7777. Args: addon nic ms */
const VLAN_RECEIVER = `
const n = require(process.argv[1]);
const fd = n.packetOpen(process.argv[2]);
console.log('ready');
const buf = new Uint8Array(64 * 2048), off = new Int32Array(64), len = new Int32Array(64);
const seen = { 5353: 0, 7777: 0 };
const timer = setInterval(() => {
  const r = n.readBatch(fd, 1, buf, off, len, 64, 2048);
  for (let i = 0; i < r; i++) {
    const o = off[i];
    if (buf[o + 12] !== 0x81 || buf[o + 13] !== 0 || ((buf[o + 14] << 8 | buf[o + 15]) & 0xfff) !== 100) continue;
    const dport = (buf[o + 18 + 22] << 8) | buf[o + 18 + 23];
    if (dport in seen) seen[dport]++;
  }
}, 20);
setTimeout(() => { clearInterval(timer); n.closeFd(fd); console.log('vlan100 udp5353: ' + seen[5353] + ', udp7777: ' + seen[7777]); process.exit(0); }, Number(process.argv[3]));
`;

/** Inside a namespace: send 3 tagged UDP frames web -> app:5353 (allowed) and 3 to :7777 (dropped). Args: addon build.js nic */
const VLAN_SENDER = `
const n = require(process.argv[1]);
import(process.argv[2]).then(({ frameBuild }) => {
  const fd = n.packetOpen(process.argv[3], false);
  const frames = [5353, 5353, 5353, 7777, 7777, 7777].map((dport, i) => frameBuild({ vlan: 100, family: 4, proto: 17,
    src: '10.77.1.11', dst: '10.77.2.21', sport: 3000 + i, dport, srcMac: '02:77:00:00:01:11', dstMac: '02:77:00:00:02:21' }));
  const buf = new Uint8Array(frames.length * 2048), off = new Int32Array(frames.length), len = new Int32Array(frames.length);
  frames.forEach((f, i) => { buf.set(f, i * 2048); off[i] = i * 2048; len[i] = f.length; });
  const sent = n.writeBatch(fd, 1, buf, off, len, frames.length);
  n.closeFd(fd);
  console.log(sent === frames.length ? 'sent' : 'sent ' + sent);
});
`;

const HOSTS = [
  { ns: 'twt-web', nic: 'twt-web1', mac: '02:77:00:00:01:11', v4: '10.77.1.11/16', v6: 'fd77::1:11/64' },
  { ns: 'twt-app', nic: 'twt-app1', mac: '02:77:00:00:02:21', v4: '10.77.2.21/16', v6: 'fd77::2:21/64' },
  { ns: 'twt-db', nic: 'twt-db1', mac: '02:77:00:00:03:31', v4: '10.77.3.31/16', v6: 'fd77::3:31/64' },
  { ns: 'twt-jump', nic: 'twt-jump1', mac: '02:77:00:00:09:05', v4: '10.77.9.5/16', v6: 'fd77::9:5/64' },
];

/** Lines from the daemon's stdout, one JSON object each, in order. */
function lines(p: ChildProcess): () => Promise<Record<string, unknown>> {
  const next = lineReader(p, 10_000);
  return async () => JSON.parse(await next()) as Record<string, unknown>;
}

type Stats = Record<string, Record<string, number>>;

for (const mode of ['tap', 'offload', 'attach', 'attach-offload', 'pcap'] as const) {
  t.test(`tapwall run between namespaces, ports in ${mode} mode`, async (t) => scenario(t, mode));
}

async function scenario(t: Tap.Test, mode: 'tap' | 'offload' | 'attach' | 'attach-offload' | 'pcap'): Promise<void> {
  const lab = new Lab();
  let daemon: ChildProcess | null = null;
  t.teardown(() => {
    if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
    lab.cleanup();
  });
  const dir = mkdtempSync(join(tmpdir(), 'tw-dp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const policyFile = join(dir, 'policy.yaml');
  writeFileSync(policyFile, POLICY);

  // attach, pcap: the "VMs" exist first (veth pairs), and tapwall attaches to their host sides.
  const tapLike = mode === 'tap' || mode === 'offload';
  // With attach-offload the veths keep their offloads: segments and partial checksums come with virtio-net headers.
  if (!tapLike) for (const h of HOSTS) lab.vethHost(h.ns, h.nic, h.nic.replace('twt-', 'twp-'), h.mac, [h.v4], [h.v6], mode !== 'attach-offload');
  const metricsArgs = ['--metrics', '127.0.0.1:0'];
  // Offload (virtio-net headers) is the default in tap and attach modes; the other two runs turn it off.
  const modeArgs = mode === 'offload' ? ['--mode', 'tap'] : mode === 'attach-offload' ? ['--mode', 'attach'] : mode === 'pcap' ? ['--mode', 'pcap'] : ['--mode', mode, '--no-offload'];
  daemon = spawn(process.execPath, [join(root, 'bin/tapwall.js'), 'run', '--config', policyFile, ...modeArgs, ...metricsArgs, '--state-dir', dir, '--api-socket', join(dir, 'api.sock')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  daemon.stderr!.on('data', (d) => { stderr += String(d); });
  const next = lines(daemon);
  const ready = await next();
  t.equal(ready.ready, true, 'the daemon is up');
  t.same((ready.ports as Array<{ name: string }>).map((p) => p.name), HOSTS.map((h) => h.nic), 'one TAP per workload');

  // tap: tapwall made the TAPs; their kernel sides become the "VMs'" NICs.
  if (tapLike) for (const h of HOSTS) lab.host(h.ns, h.nic, h.mac, [h.v4], [h.v6]);
  const servers = ['twt-app', 'twt-db'].map((ns, i) => lab.spawnIn(ns, SERVERS, [i === 0 ? 'app' : 'db', '8080', '5432', '5353', '22']));
  await Promise.all(servers.map((s) => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('servers did not start')), 10_000);
    s.stdout!.on('data', (d) => { if (String(d).includes('ready')) { clearTimeout(timer); resolve(); } });
  })));

  const tcp = (ns: string, host: string, port: number, ms = 2000) => lab.runIn(ns, TCP_CLIENT, [host, String(port), String(ms)]);
  const udp = (ns: string, host: string, port: number, ms = 2000, size = 2) => lab.runIn(ns, UDP_CLIENT, [host, String(port), String(ms), String(size)]);

  // TODO: in libpcap mode the first connection after start takes over a second about one run in five (0.35-0.5 s
  // otherwise): counters showed once a frame delivered about 1 s late with no retransmission, once web's SYN sent
  // again. The `cap` package sets immediate mode (libpcap then uses TPACKET_V2, no block timeout), so it is not
  // the ring's block timeout; not explained yet. It gets TCP's own retransmissions' time; the rest keep 2 s.
  t.equal(tcp('twt-web', '10.77.2.21', 8080, mode === 'pcap' ? 8000 : 2000), 'ok:app', 'web -> app tcp/8080 is allowed, and its replies pass');
  t.equal(tcp('twt-app', '10.77.3.31', 5432), 'ok:db', 'app -> db tcp/5432 is allowed');
  // 8 MiB each way: with offload the kernels hand over TCP segments of up to 64 KiB, which must pass whole (a port
  // whose slots were sized for 2 KiB frames once dropped them as malformed and the transfer stalled).
  t.equal(lab.runIn('twt-web', TCP_BULK, ['10.77.2.21', '8080', String(8 << 20), '20000'], 30_000), `echoed ${8 << 20} of ${8 << 20}`, 'a bulk TCP transfer web -> app and its echo, complete');
  t.equal(tcp('twt-web', 'fd77::2:21', 8080), 'ok:app', 'the same over IPv6');
  t.equal(udp('twt-web', '10.77.2.21', 5353), 'ok', 'web -> app udp/5353 and its reply');
  t.equal(udp('twt-web', 'fd77::2:21', 5353), 'ok', 'the same over IPv6');
  t.equal(udp('twt-web', '10.77.2.21', 5353, 2000, 4000), 'ok', 'a 4000-byte datagram: its later fragments follow the first, both ways');
  t.equal(udp('twt-web', 'fd77::2:21', 5353, 2000, 4000), 'ok', 'the same with IPv6 fragment headers');
  t.equal(udp('twt-db', '10.77.2.21', 5353, 1500, 4000), 'timeout', 'fragments of a denied datagram are dropped with their first');
  // VLAN-tagged frames (this kernel has no 8021q module, so raw AF_PACKET sockets inside the "VMs" send
  // and receive them): policed on the inner IP header, forwarded with their tag.
  const nicIn = (nic: string) => (tapLike ? nic : nic.replace('twt-', 'twp-'));
  const receiver = lab.spawnIn('twt-app', VLAN_RECEIVER, [join(root, 'native-bindings/index.cjs'), nicIn('twt-app1'), '3000']);
  let out = '';
  const received = new Promise<string>((resolve) => { receiver.stdout!.on('data', (d) => { out += String(d); }); receiver.on('exit', () => resolve(out.replace(/^ready\n/, '').trim())); });
  await until('the receiver to have its socket open', () => out.startsWith('ready'), 10_000);
  t.equal(lab.runIn('twt-web', VLAN_SENDER, [join(root, 'native-bindings/index.cjs'), join(root, 'dist/src/packet/build.js'), nicIn('twt-web1')]), 'sent', 'tagged frames sent');
  t.equal(await received, 'vlan100 udp5353: 3, udp7777: 0', 'the allowed tagged frames arrive with their tag; the denied ones do not');
  const started = Date.now();
  // Refused, not a timeout: the reset came back before the client's 3 s were up (how soon is a benchmark's matter).
  t.equal(tcp('twt-web', '10.77.3.31', 5432, 3000), 'refused', 'web -> db is rejected: a reset comes back');
  t.comment(`the refusal took ${Date.now() - started} ms, a process's start included`);
  t.equal(tcp('twt-web', 'fd77::3:31', 5432, 3000), 'refused', 'rejected over IPv6 too');
  t.equal(tcp('twt-db', '10.77.2.21', 8080, 1500), 'timeout', 'db -> app is dropped: the connection times out');
  t.equal(tcp('twt-web', '10.77.2.21', 22, 1500), 'timeout', 'web -> app tcp/22 is dropped by default');
  t.equal(tcp('twt-db', 'fd77::2:21', 8080, 1500), 'timeout', 'dropped over IPv6 too');
  t.equal(udp('twt-db', '10.77.2.21', 5353, 1500), 'timeout', 'db -> app udp is dropped');

  const ping = (ns: string, host: string) => lab.runIn(ns, `
    const r = require('child_process').spawnSync('ping', ['-c', '1', '-W', '1', process.argv[1]]);
    console.log(r.status === 0 ? 'ok' : 'lost');`, [host]);
  t.equal(ping('twt-jump', '10.77.2.21'), 'ok', 'jump -> app ping is allowed, and the echo reply passes');
  t.equal(ping('twt-jump', 'fd77::2:21'), 'ok', 'ping over IPv6 (neighbour discovery passes SpoofGuard)');
  t.equal(ping('twt-web', '10.77.2.21'), 'lost', 'web -> app ping is dropped');

  // A spoofed source: web-1 sends UDP as if from db-1, with raw-socket.
  const statsBefore = await stats();
  const spoofed = lab.runIn('twt-web', `
    const raw = require(process.argv[1]);
    import(process.argv[2]).then(({ ipPacket }) => {
      const pkt = Buffer.from(ipPacket({ family: 4, src: '10.77.3.31', dst: '10.77.2.21', proto: 17, sport: 4000, dport: 5353 }));
      const s = raw.createSocket({ protocol: raw.Protocol.UDP });
      s.setOption(raw.SocketLevel.IPPROTO_IP, raw.SocketOption.IP_HDRINCL, Buffer.from([1, 0, 0, 0]), 4);
      let sent = 0;
      for (let i = 0; i < 5; i++) {
        s.send(pkt, 0, pkt.length, '10.77.2.21', (err) => {
          if (err) console.log('error ' + err.message);
          if (++sent === 5) { console.log('sent'); s.close(); }
        });
      }
    });
  `, [join(root, 'node_modules/raw-socket'), join(root, 'dist/src/packet/build.js')]);
  t.equal(spoofed, 'sent', 'five spoofed datagrams sent');
  let statsAfter = await stats();
  const spoofDropped = () => (statsAfter['twt-web1'].spoof ?? 0) - (statsBefore['twt-web1'].spoof ?? 0);
  await until('the five spoofed datagrams to be counted', async () => { statsAfter = await stats(); return spoofDropped() >= 5; }, 5000);
  t.equal(spoofDropped(), 5, 'all five dropped as spoof, and counted');

  // ARP requests go only to the owner of the address asked for.
  const beforeArp = await stats();
  sh(['ip', '-n', 'twt-web', 'neigh', 'flush', 'all']);
  t.equal(tcp('twt-web', '10.77.2.21', 8080), 'ok:app', 'web -> app again, after forgetting its neighbours');
  const afterArp = await stats();
  t.ok(afterArp['twt-app1'].tx > beforeArp['twt-app1'].tx, 'app received the ARP request and the connection');
  // That the request reached app alone (never flooded) is shown frame by frame in verdict-holes.test.ts:
  // here other ports' counters cannot show it, since their own neighbours' unicast probes (NUD) may
  // arrive at any time.

  // Every received frame ends in exactly one counted outcome.
  for (const [port, s] of Object.entries(statsAfter)) {
    const outcomes = OUTCOME_NAMES.reduce((a, o) => a + (s[o] ?? 0), 0);
    t.equal(outcomes, s.rx, `${port}: ${s.rx} received = ${outcomes} counted outcomes`);
  }
  t.ok(statsAfter['twt-web1'].reject >= 2 && statsAfter['twt-web1'].replies >= 2, 'rejects were answered');

  // Prometheus metrics, read from the same counters.
  const metricsUrl = ready.metrics as string;
  t.match(metricsUrl, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/, 'metrics served on loopback');
  // Frames keep arriving (ARP, ND): the scrape must lie between the daemon's counters read just before and just after it.
  const before = await stats();
  const body = await (await fetch(metricsUrl)).text();
  const sample = (name: string, labels: string) => Number(new RegExp(`^${name}\\{${labels.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\} (\\S+)$`, 'm').exec(body)?.[1]);
  const now = await stats();
  t.equal(sample('tapwall_port_frames_total', 'port="twt-web1",workload="web-1",outcome="spoof"'), now['twt-web1'].spoof, 'spoof drops in Prometheus match the daemon counters');
  const appRx = sample('tapwall_port_received_packets_total', 'port="twt-app1",workload="app-1"');
  t.ok(appRx >= before['twt-app1'].rx && appRx <= now['twt-app1'].rx, `received packets exported per port (${before['twt-app1'].rx} <= ${appRx} <= ${now['twt-app1'].rx})`);
  t.ok(sample('tapwall_flow_events_total', 'event="inserts"') > 0, 'flow table events exported');
  t.equal(sample('tapwall_port_up', 'port="twt-db1",workload="db-1"'), 1, 'port state exported');
  t.match(body, /^process_cpu_seconds_total /m, 'with the default process metrics');

  // SIGHUP: a broken policy is refused and the running one stays; a good one is taken.
  writeFileSync(policyFile, 'default: sometimes\n');
  daemon.kill('SIGHUP');
  t.same(await next(), { reloaded: false }, 'an invalid policy is refused on reload');
  t.equal(tcp('twt-web', '10.77.2.21', 8080), 'ok:app', 'and traffic still flows under the running policy');
  writeFileSync(policyFile, POLICY.replace('services: [tcp/8080, udp/5353]', 'services: [tcp/22]'));
  daemon.kill('SIGHUP');
  t.same(await next(), { reloaded: true }, 'a valid policy is taken');
  t.equal(tcp('twt-web', '10.77.2.21', 22), 'ok:app', 'the new policy allows tcp/22');
  t.equal(tcp('twt-web', '10.77.2.21', 8080, 1500), 'timeout', 'and no longer tcp/8080');

  // A vNIC that vanishes (its "VM" is gone) is counted and reported, never a crash; the others carry on.
  // Not in pcap mode: the `cap` package aborts the process when libpcap's descriptor reports an error
  // (an assertion in its binding, upstream issue mscdex/cap#82); the README says so.
  if (mode !== 'pcap') {
    sh(['ip', 'netns', 'del', 'twt-jump']);
    lab.namespaces.splice(lab.namespaces.indexOf('twt-jump'), 1);
    let afterVanish = await stats();
    await until('the vanished port to be marked down', async () => { afterVanish = await stats(); return afterVanish['twt-jump1']?.up === 0; }, 5000);
    t.equal(tcp('twt-web', '10.77.2.21', 22), 'ok:app', 'traffic between the others still flows');
    t.match(afterVanish['twt-jump1'], { up: 0 }, `the vanished port is marked down (${JSON.stringify(afterVanish['twt-jump1'])})`);
    t.ok(afterVanish['twt-jump1'].rxErrors >= 1, 'and its error counted');
  }

  daemon.kill('SIGTERM');
  const stopped = await next();
  t.equal(stopped.stopped, true, 'SIGTERM stops cleanly');
  const code = await new Promise<number | null>((r) => daemon!.once('exit', (c) => r(c)));
  t.equal(code, 0, `exit code 0 ${stderr.includes('"level":50') ? '(with logged errors)' : ''}`);

  async function stats(): Promise<Stats> {
    daemon!.kill('SIGUSR2');
    const line = await next();
    return line.stats as Stats;
  }
}

declare namespace Tap { type Test = typeof t; }
