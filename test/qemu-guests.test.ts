// Real QEMU guests behind tapwall: two guests (Debian's kernel, a busybox
// initramfs built here, KVM where it works, else software emulation) with a virtio-net NIC each on a
// TAP device that QEMU creates (-netdev tap,ifname=twg-...,script=no), and
// tapwall attached to those TAPs with AF_PACKET. It shows ping and an allowed
// TCP connection between the guests working, a denied one not, a guest that
// changes its own IP or MAC stopped by SpoofGuard, a quarantine through the
// API cutting an open connection, and a guest that shuts down and boots
// again picked up without restarting tapwall. Guests are killed and their
// TAPs removed at the end, also on failure; every wait is bounded.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, lineReader, sh } from '../tools/lab.js';
import { Guest, buildInitramfs, guestAccel, type GuestSpec } from '../tools/guest.js';
import { apiCall } from '../src/cli/client.js';
import { until } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const A: GuestSpec = { name: 'a', tap: 'twg-a', mac: '02:81:00:00:00:0a', ip: '10.81.0.11/24' };
const B: GuestSpec = { name: 'b', tap: 'twg-b', mac: '02:81:00:00:00:0b', ip: '10.81.0.12/24' };
const POLICY = `default: drop
spoofguard: true
workloads:
  guest-a: { nic: twg-a, mac: "${A.mac}", ips: [10.81.0.11], tags: [web] }
  guest-b: { nic: twg-b, mac: "${B.mac}", ips: [10.81.0.12], tags: [app] }
groups:
  web: { tags: [web] }
  app: { tags: [app] }
  guests: { tags: [web, app] }
  quarantined: { tags: [quarantine] }
sections:
  - name: emergency
    rules:
      - { id: quarantine-out, from: quarantined, to: any, action: drop }
      - { id: quarantine-in, from: any, to: quarantined, action: drop }
  - name: application
    rules:
      - { id: ping, from: guests, to: guests, services: [icmp/echo-request], action: allow }
      - { id: web-to-app, from: web, to: app, services: [tcp/8080, tcp/7777], action: allow }
`;

type Port = { name: string; up: boolean; attaches: number; outcomes: Record<string, number> };

t.test('QEMU guests behind tapwall', async (t) => {
  const lab = new Lab();
  const guests: Guest[] = [];
  let daemon: ChildProcess | null = null;
  t.teardown(async () => {
    for (const g of guests) await g.stop();
    if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
    lab.cleanup();
  });
  const dir = mkdtempSync(join(tmpdir(), 'tw-qemu-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const initramfs = join(dir, 'initramfs.cpio');
  buildInitramfs(initramfs);
  const accel = await guestAccel(initramfs);
  t.comment(`guests run with ${accel === 'kvm' ? 'KVM' : 'software emulation (KVM does not boot guests here)'}`);
  writeFileSync(join(dir, 'policy.yaml'), POLICY);
  const socket = join(dir, 'api.sock');
  const api = { socket };

  // tapwall first: the guests' TAPs do not exist yet, and that is not fatal.
  daemon = spawn(process.execPath, [join(root, 'bin/tapwall.js'), 'run', '--config', join(dir, 'policy.yaml'), '--mode', 'attach',
    '--state-dir', join(dir, 'state'), '--api-socket', socket, '--metrics', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'ignore'] });
  await lineReader(daemon, 15_000)();
  const ports = async () => (await apiCall<{ ports: Port[] }>(api, 'GET', '/v1/status')).body.ports;
  const port = async (name: string) => (await ports()).find((p) => p.name === name)!;
  t.same((await ports()).map((p) => p.up), [false, false], 'both vNICs are reported down before the guests start');
  const waitUntil = (what: string, ok: () => Promise<boolean>, ms = 15_000) => until(what, ok, ms);

  /** Boot a guest; bring its TAP up (QEMU creates it down) with no IPv6 of the host's own on it. */
  const boot = async (spec: GuestSpec): Promise<Guest> => {
    const g = new Guest(spec, initramfs, accel);
    guests.push(g);
    if (!lab.links.includes(spec.tap)) lab.links.push(spec.tap);
    await waitUntil(`${spec.tap} to appear`, async () => existsSync(`/sys/class/net/${spec.tap}`));
    sh(['sysctl', '-qw', `net.ipv6.conf.${spec.tap}.disable_ipv6=1`], { allowFail: true });
    sh(['ip', 'link', 'set', spec.tap, 'up']);
    await g.ready();
    return g;
  };
  const [a, b0] = await Promise.all([boot(A), boot(B)]);
  let b = b0;
  await waitUntil('tapwall to attach both TAPs', async () => (await ports()).every((p) => p.up));
  t.pass('both guests booted and tapwall attached to their TAPs');

  t.equal((await a.run('ping -c 2 -W 2 10.81.0.12')).code, 0, 'a pings b (allowed, replies pass)');
  // busybox's static wget crashes (its resolver); an HTTP request through nc does the same job.
  const http = (g: Guest, host: string, port: number) => g.run(`printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${host} ${port}`, 30_000);
  const web = await http(a, '10.81.0.12', 8080);
  t.ok(web.code === 0 && /200 OK/.test(web.output) && /\nb$/.test(web.output), 'a fetches http://b:8080/ and gets b\'s page (allowed TCP)');
  const denied = await http(a, '10.81.0.12', 9090);
  t.same([denied.code, denied.output], [1, 'nc: timed out'], 'a cannot reach b:9090: the connection times out (denied by the default)');
  const reverse = await http(b, '10.81.0.11', 8080);
  t.same([reverse.code, reverse.output], [1, 'nc: timed out'], 'b cannot open connections to a (only web -> app is allowed)');

  // SpoofGuard: a takes an address that is not its own, then a MAC that is not its own.
  const spoofBefore = (await port('twg-a')).outcomes.spoof;
  await a.run('ip addr add 10.81.0.99/24 dev eth0');
  t.not((await a.run('ping -c 2 -W 1 -I 10.81.0.99 10.81.0.12')).code, 0, 'a ping from an address a gave itself does not get through');
  await a.run('ip addr del 10.81.0.99/24 dev eth0');
  await a.run(`ip link set eth0 down; ip link set eth0 address 02:81:00:00:00:99; ip link set eth0 up`);
  t.not((await a.run('ping -c 2 -W 1 10.81.0.12')).code, 0, 'nor anything from a MAC a gave itself');
  await a.run(`ip link set eth0 down; ip link set eth0 address ${A.mac}; ip link set eth0 up; ip addr add ${A.ip} dev eth0 2>/dev/null; true`);
  const spoofAfter = (await port('twg-a')).outcomes.spoof;
  t.ok(spoofAfter - spoofBefore >= 4, `SpoofGuard dropped and counted them (${spoofAfter - spoofBefore} frames)`);
  t.equal((await a.run('ping -c 2 -W 2 10.81.0.12')).code, 0, 'with its own MAC and address back, a reaches b again');

  // An open connection a -> b:7777, cut by a quarantine tag through the API.
  // Both ends in their own session, off the console: nothing may read the test's next commands or touch the shell's tty.
  await b.run("setsid sh -c 'sleep 600 | nc -l -p 7777 > /tmp/recv' < /dev/null > /dev/null 2>&1 &");
  // The listener starts in the background: wait until b's kernel lists it (port 7777 = 1E61, state 0A = LISTEN,
  // over IPv4 or IPv6)
  // before a connects, or a lost race leaves a with nothing to connect to.
  await waitUntil('b to listen on 7777', async () => (await b.run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -qiE ':1E61 [0-9A-F]+:0000 0A' && echo listening")).output.includes('listening'), 20_000);
  await a.run("setsid sh -c 'while :; do echo x; sleep 0.2; done | nc 10.81.0.12 7777' < /dev/null > /dev/null 2>&1 &");
  const received = async () => Number(/(\d+)\s*$/.exec((await b.run('wc -l < /tmp/recv')).output)?.[1] ?? -1);
  await waitUntil('the connection to carry data', async () => (await received()) >= 5, 20_000);
  t.pass('a has an open connection to b:7777 carrying data');
  await apiCall(api, 'POST', '/v1/workloads/guest-a/tags', { add: ['quarantine'], reason: 'test: guest flagged', by: 'qemu-test' });
  // What was already on its way may still land: the count is taken once it has held for a second (a slow guest
  // writes its last lines late), then nothing more may come in the next two, while a goes on sending every 0.2 s.
  let r1 = await received();
  await waitUntil("what was on its way to land in b's file", async () => {
    await new Promise((r) => setTimeout(r, 1000));
    const now = await received();
    const held = now === r1;
    r1 = now;
    return held;
  }, 20_000);
  await new Promise((r) => setTimeout(r, 2000));
  t.equal(await received(), r1, 'after the quarantine tag nothing more arrives on that connection');
  t.ok((await port('twg-a')).outcomes.cut > 0, "the cut packets are counted on a's port");
  t.not((await a.run('ping -c 1 -W 1 10.81.0.12')).code, 0, 'and a can reach nothing');
  await apiCall(api, 'POST', '/v1/workloads/guest-a/tags', { remove: ['quarantine'], reason: 'test: cleaned' });
  t.equal((await a.run('ping -c 2 -W 2 10.81.0.12')).code, 0, 'lifted: a reaches b again');

  // b shuts down (its TAP goes away with QEMU) and boots again (a new TAP of the same name).
  await b.stop();
  guests.splice(guests.indexOf(b), 1);
  await waitUntil('twg-b to be reported down', async () => !(await port('twg-b')).up);
  t.pass('b stopped: its port is reported down, tapwall keeps running');
  t.not((await a.run('ping -c 1 -W 1 10.81.0.12')).code, 0, 'nothing reaches b while it is off');
  b = await boot(B);
  await waitUntil('tapwall to attach the new twg-b', async () => { const p = await port('twg-b'); return p.up && p.attaches >= 2; });
  t.equal((await a.run('ping -c 2 -W 2 10.81.0.12')).code, 0, 'b is back: a reaches it, tapwall never restarted');
  t.equal(daemon.exitCode, null, 'the daemon is still running');
});
