// The addon's contract: its layout numbers equal the TypeScript side's, batch
// calls check their arguments, EAGAIN is an empty read (not an error), and a
// TAP round-trips a batch of frames with one call each way.
import t from 'tap';
import { until } from './fixtures.js';
import { execFileSync, spawn } from 'node:child_process';
import { native, NATIVE_LAYOUT } from '../src/io/native.js';
import { frameBuild } from '../src/packet/build.js';

const n = native();

t.test('layout contract', async (t) => {
  for (const [k, v] of Object.entries(NATIVE_LAYOUT)) t.equal(n.layout[k], v, k);
});

t.test('batch calls refuse buffers that do not fit', async (t) => {
  const buf = new Uint8Array(100), off = new Int32Array(4), len = new Int32Array(4);
  t.throws(() => n.readBatch(-1, 0, buf, off, len, 4, 2048), { code: 'ERANGE' }, 'slots larger than the buffer');
  t.throws(() => n.readBatch(-1, 0, new Float64Array(4) as unknown as Uint8Array, off, len, 1, 10), { code: 'EARGS' }, 'wrong array types');
  off[0] = 90; len[0] = 20;
  t.throws(() => n.writeBatch(-1, 0, buf, off, len, 1), { code: 'ERANGE' }, 'a frame outside the buffer');
  t.ok(n.readBatch(-1, 0, new Uint8Array(4096), off, len, 1, 2048) < 0, 'a bad descriptor is -errno, not a throw');
});

t.test('a TAP: empty reads are 0, a batch goes in and comes out', async (t) => {
  const [fd, name] = n.tapOpen('twt-native0', 0);
  t.teardown(() => {
    n.closeFd(fd);
    try { execFileSync('ip', ['netns', 'del', 'twt-native']); } catch { /* already gone */ }
  });
  t.equal(name, 'twt-native0');
  const buf = new Uint8Array(8 * 2048), off = new Int32Array(8), len = new Int32Array(8);
  t.equal(n.readBatch(fd, NATIVE_LAYOUT.kindTap, buf, off, len, 8, 2048), 0, 'nothing to read: 0, not an error');
  execFileSync('ip', ['netns', 'add', 'twt-native']);
  execFileSync('ip', ['link', 'set', 'twt-native0', 'netns', 'twt-native']);
  execFileSync('ip', ['-n', 'twt-native', 'addr', 'add', '10.78.0.1/24', 'dev', 'twt-native0']);
  execFileSync('ip', ['-n', 'twt-native', 'link', 'set', 'twt-native0', 'up']);
  // Write 4 frames into the namespace's stack in one call: UDP to a closed port draws ICMP errors back.
  const frames = [1, 2, 3, 4].map((i) => frameBuild({ family: 4, src: '10.78.0.2', dst: '10.78.0.1', proto: 17, sport: 1000 + i, dport: 9, srcMac: '02:78:00:00:00:02', dstMac: 'ff:ff:ff:ff:ff:ff' }));
  frames.forEach((f, i) => { buf.set(f, i * 2048); off[i] = i * 2048; len[i] = f.length; });
  t.equal(n.writeBatch(fd, NATIVE_LAYOUT.kindTap, buf, off, len, 4), 4, 'four frames written in one call');
  const got: number[] = [];
  const deadline = Date.now() + 3000;
  while (got.length === 0 && Date.now() < deadline) {
    const r = n.readBatch(fd, NATIVE_LAYOUT.kindTap, buf, off, len, 8, 2048);
    for (let i = 0; i < r; i++) got.push(len[i]);
    if (r === 0) execFileSync('sleep', ['0.05']);
  }
  t.ok(got.length > 0, `the namespace answered; ${got.length} frames read in one call`);
  // Drain, then let the namespace send (an ARP for a neighbour that does not exist) while we wait on the loop.
  while (n.readBatch(fd, NATIVE_LAYOUT.kindTap, buf, off, len, 8, 2048) > 0) { /* drain */ }
  const handle = { h: null as object | null };
  const watched = await new Promise<number>((resolve) => {
    const timer = setTimeout(() => resolve(0), 5000);
    handle.h = n.watch(fd, (ev) => { clearTimeout(timer); resolve(ev); });
    spawn('ip', ['netns', 'exec', 'twt-native', 'ping', '-c', '1', '-W', '1', '10.78.0.9'], { stdio: 'ignore' });
  });
  n.unwatch(handle.h!); // before the descriptor is closed: libuv must not poll a closed fd
  t.ok(watched > 0 && (watched & NATIVE_LAYOUT.uvReadable) !== 0, `the event loop reported the descriptor readable (events ${watched})`);
});

t.test('AF_PACKET on a veth reads through a TPACKET_V3 ring, in batches', async (t) => {
  execFileSync('ip', ['link', 'add', 'twt-ring0', 'type', 'veth', 'peer', 'name', 'twt-ring1']);
  t.teardown(() => { try { execFileSync('ip', ['link', 'del', 'twt-ring0']); } catch { /* gone */ } });
  for (const d of ['twt-ring0', 'twt-ring1']) {
    execFileSync('sysctl', ['-qw', `net.ipv6.conf.${d}.disable_ipv6=1`]);
    execFileSync('ip', ['link', 'set', d, 'up']);
  }
  const rx = n.packetOpen('twt-ring0'), tx = n.packetOpen('twt-ring1', false);
  t.teardown(() => { n.closeFd(rx); n.closeFd(tx); });
  t.equal(n.usesRing(rx), true, 'the receive socket has a ring');
  t.equal(n.usesRing(tx), false, 'a socket opened without one reads with recvmmsg');
  const buf = new Uint8Array(64 * 2048), off = new Int32Array(64), len = new Int32Array(64);
  const frames = Array.from({ length: 40 }, (_, i) => frameBuild({ family: 4, src: '10.79.0.1', dst: '10.79.0.2', proto: 17, sport: 2000 + i, dport: 9, dstMac: '02:79:00:00:00:02', srcMac: '02:79:00:00:00:01' }));
  frames.forEach((f, i) => { buf.set(f, i * 2048); off[i] = i * 2048; len[i] = f.length; });
  t.equal(n.writeBatch(tx, NATIVE_LAYOUT.kindPacket, buf, off, len, 40), 40, '40 frames sent with one sendmmsg');
  const seen: number[] = [];
  const deadline = Date.now() + 3000;
  const rbuf = new Uint8Array(64 * 2048);
  // One assertion for all the reads (one per read made the suite's count vary with how many it took).
  let failed: number | null = null, most = 0;
  while (seen.length < 40 && Date.now() < deadline) {
    const r = n.readBatch(rx, NATIVE_LAYOUT.kindPacket, rbuf, off, len, 16, 2048);
    if (r < 0) { failed = r; break; }
    most = Math.max(most, r);
    for (let i = 0; i < r; i++) seen.push((rbuf[off[i] + 34] << 8) | rbuf[off[i] + 35]);
    if (r === 0) execFileSync('sleep', ['0.01']);
  }
  t.equal(failed, null, 'no read failed');
  t.ok(most <= 16, `at most 16 frames per call (${most})`);
  t.same(seen, frames.map((_, i) => 2000 + i), 'all 40 came out of the ring in order');
});

t.test('a persistent TAP owned by a user outlives its descriptor, as libvirt makes them', async (t) => {
  t.teardown(() => { try { execFileSync('ip', ['tuntap', 'del', 'dev', 'twt-persist0', 'mode', 'tap']); } catch { /* gone */ } });
  const [fd] = n.tapOpen('twt-persist0', 1, 4242);
  n.closeFd(fd);
  const details = execFileSync('ip', ['-d', 'link', 'show', 'twt-persist0'], { encoding: 'utf8' });
  t.match(details, /tun type tap/, 'still there after close');
  t.match(details, /user 4242/, 'owned by uid 4242');
  const [fd2] = n.tapOpen('twt-persist0', 0);
  t.ok(fd2 >= 0, 'and it can be opened again');
  n.closeFd(fd2);
});

/** A veth pair for one test, removed at its end; both ends up, no IPv6 chatter. */
function vethPair(t: Tap.Test, a: string, b: string): void {
  execFileSync('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
  t.teardown(() => { try { execFileSync('ip', ['link', 'del', a]); } catch { /* gone */ } });
  for (const d of [a, b]) {
    execFileSync('sysctl', ['-qw', `net.ipv6.conf.${d}.disable_ipv6=1`]);
    execFileSync('ip', ['link', 'set', d, 'up']);
  }
}
declare namespace Tap { type Test = typeof t; }

t.test('frames the kernel drops when the ring is full are counted (packetDrops)', async (t) => {
  vethPair(t, 'twt-drop0', 'twt-drop1');
  const rx = n.packetOpen('twt-drop0'), tx = n.packetOpen('twt-drop1', false);
  t.teardown(() => { n.closeFd(rx); n.closeFd(tx); });
  t.equal(n.packetDrops(rx), 0, 'none dropped yet');
  // 1400-byte frames: the ring's 64 blocks of 256 KiB hold about 11,000; send 30,000 without reading.
  const frame = frameBuild({ family: 4, src: '10.79.0.1', dst: '10.79.0.2', proto: 17, sport: 2000, dport: 9, dstMac: '02:79:00:00:00:02', srcMac: '02:79:00:00:00:01', payload: new Uint8Array(1350) });
  const buf = new Uint8Array(256 * 2048), off = new Int32Array(256), len = new Int32Array(256);
  for (let i = 0; i < 256; i++) { buf.set(frame, i * 2048); off[i] = i * 2048; len[i] = frame.length; }
  let sent = 0;
  for (let tries = 0; sent < 30_000 && tries < 100_000; tries++) {
    const r = n.writeBatch(tx, NATIVE_LAYOUT.kindPacket, buf, off, len, 256);
    if (r > 0) sent += r;
  }
  t.ok(sent >= 30_000, `${sent} frames sent`);
  // The kernel delivers the frames in its own time: the drops are added up as they are reported (a read of the
  // count resets it), until some were and a read finds no more (a count that did not reset never gets there).
  let dropped = 0;
  await until('the kernel to report drops, then no more', () => { const now = n.packetDrops(rx); dropped += now; return dropped > 0 && now === 0; }, 5000);
  t.ok(dropped > 0, `the kernel dropped ${dropped} frames for the full ring, and says so`);
  t.equal(n.packetDrops(rx), 0, 'the count starts again from zero once read');
  let read = 0;
  const rbuf = new Uint8Array(256 * 2048);
  for (let r = n.readBatch(rx, NATIVE_LAYOUT.kindPacket, rbuf, off, len, 256, 2048); r > 0; r = n.readBatch(rx, NATIVE_LAYOUT.kindPacket, rbuf, off, len, 256, 2048)) read += r;
  t.ok(read > 0 && read + dropped <= sent, `${read} read and ${dropped} dropped of ${sent} sent`);
});

t.test('the addon keeps its state per instance: a worker thread has its own', async (t) => {
  vethPair(t, 'twt-wrk0', 'twt-wrk1');
  const mine = n.packetOpen('twt-wrk0');
  t.teardown(() => n.closeFd(mine));
  t.equal(n.usesRing(mine), true, 'this thread opened a ring');
  const { Worker } = await import('node:worker_threads');
  const { createRequire } = await import('node:module');
  const addonPath = createRequire(import.meta.url).resolve('tapwall-native');
  const worker = new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    const n = require(workerData.addon);
    const fd = n.packetOpen('twt-wrk1');
    parentPort.postMessage({ own: n.usesRing(fd), others: n.usesRing(workerData.mine) });
    n.closeFd(fd);
  `, { eval: true, workerData: { addon: addonPath, mine } });
  const answer = await new Promise<{ own: boolean; others: boolean }>((resolve, reject) => { worker.once('message', resolve); worker.once('error', reject); });
  await new Promise((r) => worker.once('exit', r));
  t.same(answer, { own: true, others: false }, "the worker's instance has its own ring, and knows nothing of this thread's");
  t.equal(n.usesRing(mine), true, "after the worker's instance is gone, this thread's ring is still there");
  const buf = new Uint8Array(8 * 2048), off = new Int32Array(8), len = new Int32Array(8);
  t.ok(n.readBatch(mine, NATIVE_LAYOUT.kindPacket, buf, off, len, 8, 2048) >= 0, 'and reads');
});
