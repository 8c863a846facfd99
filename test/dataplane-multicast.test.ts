// East-west multicast for real: `tapwall run` owns three TAPs whose kernel
// sides are the NICs of three namespaces. A speaker sends UDP to an IPv4 and
// an IPv6 multicast group that two VMs have joined; the policy lets the
// group's traffic into the listener only. The listener's kernel receives
// every datagram, the other VM none, and the refusals are counted at the
// other VM's port. Namespaces and links are removed at the end, also on
// failure.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, lineReader, sh } from '../tools/lab.js';
import { until } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));

const POLICY = `
default: drop
spoofguard: true
workloads:
  speaker-1: { nic: twe-spk, mac: "02:88:00:00:00:01", ips: [10.88.0.1, "fd88::1"], tags: [speaker] }
  listener-1: { nic: twe-lsn, mac: "02:88:00:00:00:02", ips: [10.88.0.2, "fd88::2"], tags: [listener] }
  other-1: { nic: twe-oth, mac: "02:88:00:00:00:03", ips: [10.88.0.3, "fd88::3"], tags: [other] }
groups:
  speakers: { tags: [speaker] }
  listeners: { tags: [listener] }
sections:
  - name: multicast
    rules:
      - id: stream-to-listeners
        from: speakers
        to: [239.1.2.3/32, "ff15::1234/128"]
        services: [udp/5000]
        action: allow
        appliedTo: [speakers, listeners]
`;

const HOSTS = [
  { ns: 'twe-speaker', nic: 'twe-spk', mac: '02:88:00:00:00:01', v4: '10.88.0.1/24', v6: 'fd88::1/64' },
  { ns: 'twe-listener', nic: 'twe-lsn', mac: '02:88:00:00:00:02', v4: '10.88.0.2/24', v6: 'fd88::2/64' },
  { ns: 'twe-other', nic: 'twe-oth', mac: '02:88:00:00:00:03', v4: '10.88.0.3/24', v6: 'fd88::3/64' },
];

/**
 * Join 239.1.2.3 and ff15::1234 on port 5000, say ready, and count datagrams; print the counts and exit once
 * `expect` have come (0: never), or when told to (SIGTERM). Args: nic expect
 */
const RECEIVER = `
const dgram = require('dgram');
const [nic, expect] = [process.argv[1], Number(process.argv[2])];
const got = { v4: 0, v6: 0 };
const done = () => { console.log('v4 ' + got.v4 + ', v6 ' + got.v6); process.exit(0); };
process.on('SIGTERM', done);
const s4 = dgram.createSocket({ type: 'udp4', reuseAddr: true });
const s6 = dgram.createSocket({ type: 'udp6', reuseAddr: true });
let bound = 0;
const ready = () => { if (++bound === 2) console.log('ready'); };
const one = (k) => { got[k]++; if (expect > 0 && got.v4 + got.v6 === expect) done(); };
s4.on('message', () => one('v4'));
s6.on('message', () => one('v6'));
s4.bind(5000, '239.1.2.3', () => { s4.addMembership('239.1.2.3'); ready(); });
s6.bind(5000, '::', () => { s6.addMembership('ff15::1234', '::%' + nic); ready(); });
setTimeout(done, 60000); // bounded, whatever happens
`;

/** Send 5 datagrams to each group out of the NIC, 50 ms apart. Args: nic */
const SENDER = `
const dgram = require('dgram');
const nic = process.argv[1];
const s4 = dgram.createSocket('udp4'), s6 = dgram.createSocket('udp6');
let sent = 0;
s4.bind(0, '10.88.0.1', () => {
  s4.setMulticastInterface('10.88.0.1');
  s6.bind(0, '::', () => {
    s6.setMulticastInterface('::%' + nic);
    let i = 0;
    const timer = setInterval(() => {
      s4.send('hello ' + i, 5000, '239.1.2.3', () => sent++);
      s6.send('hello ' + i, 5000, 'ff15::1234', () => sent++);
      if (++i === 5) { clearInterval(timer); setTimeout(() => { console.log('sent ' + sent); process.exit(0); }, 100); }
    }, 50);
  });
});
`;

t.test('UDP multicast between VMs reaches the ports whose policy takes it, and no others', async (t) => {
  const lab = new Lab();
  let daemon: ChildProcess | null = null;
  t.teardown(() => {
    if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
    lab.cleanup();
  });
  const dir = mkdtempSync(join(tmpdir(), 'tw-mc-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const policyFile = join(dir, 'policy.yaml');
  writeFileSync(policyFile, POLICY);
  daemon = spawn(process.execPath, [join(root, 'bin/tapwall.js'), 'run', '--config', policyFile, '--mode', 'tap', '--state-dir', dir, '--api-socket', join(dir, 'api.sock'), '--no-flow-state'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  daemon.stderr!.on('data', (d) => { stderr += String(d); });
  const next = lineReader(daemon, 15_000);
  const ready = JSON.parse(await next()) as { ready: boolean };
  t.equal(ready.ready, true, 'the daemon is up');
  for (const h of HOSTS) {
    lab.host(h.ns, h.nic, h.mac, [h.v4], [h.v6]);
    // Multicast leaves by the VM's NIC (these namespaces have no default route).
    sh(['ip', '-n', h.ns, 'route', 'add', '224.0.0.0/4', 'dev', h.nic]);
    sh(['ip', '-n', h.ns, '-6', 'route', 'add', 'ff00::/8', 'dev', h.nic, 'table', 'local'], { allowFail: true });
  }

  const stats = async (): Promise<Record<string, Record<string, number>>> => {
    daemon!.kill('SIGUSR2');
    return (JSON.parse(await next()) as { stats: Record<string, Record<string, number>> }).stats;
  };
  const before = await stats();

  // The listener exits once it has all 10; the other is asked for its count then: tapwall hands each datagram to
  // both receivers' TAPs in the same batch write, so by then the other has had every chance to get them.
  const receivers = ['twe-listener', 'twe-other'].map((ns, i) => {
    const p = lab.spawnIn(ns, RECEIVER, [HOSTS[i + 1].nic, i === 0 ? '10' : '0']);
    let out = '';
    p.stdout!.on('data', (d) => { out += String(d); });
    const done = new Promise<string>((resolve) => p.on('exit', () => resolve(out.replace(/^ready\n/, '').trim())));
    return { ready: () => out.startsWith('ready'), done, stop: () => p.kill('SIGTERM') };
  });
  await until('both receivers to have joined their groups', () => receivers.every((r) => r.ready()), 10_000);
  t.equal(lab.runIn('twe-speaker', SENDER, ['twe-spk']), 'sent 10', 'the speaker sent 5 datagrams to each group');
  const listener = await receivers[0].done;
  receivers[1].stop();
  const other = await receivers[1].done;
  t.equal(listener, 'v4 5, v6 5', 'the listener received every datagram of both groups');
  t.equal(other, 'v4 0, v6 0', 'the VM whose ingress policy does not take them received none');

  const after = await stats();
  const delta = (port: string, key: string) => (after[port][key] ?? 0) - (before[port][key] ?? 0);
  t.ok(delta('twe-oth', 'groupRefused') >= 10, `the other VM's port counted its refusals (${delta('twe-oth', 'groupRefused')})`);
  t.ok(delta('twe-lsn', 'tx') >= 10, `the listener's port sent them (${delta('twe-lsn', 'tx')} frames)`);
  t.ok(delta('twe-spk', 'forward') >= 10, `the speaker's datagrams were forwarded (${delta('twe-spk', 'forward')})`);
  // Every frame the speaker sent is counted in exactly one outcome.
  const outcomes = ['forward', 'policy', 'reject', 'invalid_state', 'table_full', 'quota', 'malformed', 'cut', 'spoof', 'ethertype', 'no_route', 'vlan', 'misdirected', 'rate_limit'];
  for (const port of ['twe-spk', 'twe-lsn', 'twe-oth']) {
    t.equal(outcomes.reduce((sum, o) => sum + (after[port][o] ?? 0), 0), after[port].rx, `${port}: received = the sum of its outcomes`);
  }
  t.notMatch(stderr, /internal error|TypeError/, 'no errors from the daemon');
});
