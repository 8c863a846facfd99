// The hot path allocates nothing per frame, and per batch only its clock
// reading: the real data plane on in-memory ports, pumped batch after batch
// (new connections allowed, rejected and dropped, established ones, packets
// with no connection, ARP, spoofed sources; a flow log, a staged policy,
// connections judged again under a new policy; the same in IPv6 with
// neighbour discovery and the uplink), and the JavaScript heap
// measured around windows of batches in which no collection ran
// (v8.GCProfiler says so synchronously).
//
// Why it matters: a young-generation collection on the forwarding thread is
// a gap in forwarding, and while a reload's new objects are young it copies
// them; what the hot path allocates decides how often that happens. A closure
// made per batch (the connection sweep's, 112 bytes) once made it every
// 150,000 batches or so.
//
// The one allocation left: performance.now() returns its double boxed (16
// bytes a call, once a batch, twice more every BATCH_TIME_SAMPLE batches).
import t, { type Test } from 'tap';
import v8 from 'node:v8';
import { readFileSync } from 'node:fs';
import { Dataplane } from '../src/datapath/dataplane.js';
import type { PortSpec } from '../src/datapath/ports.js';
import { MemoryPort } from '../src/io/memoryPort.js';
import { policyCompile } from '../src/policy/compile.js';
import { policyParse } from '../src/policy/load.js';
import { arpFrame, frameBuild, ndFrame } from '../src/packet/build.js';
import { TCP_ACK, TCP_SYN } from '../src/packet/parse.js';
import { CTC } from '../src/flow/conntrack.js';
import { OUTCOME_COUNT, Outcome } from '../src/packet/verdict.js';

const WEB = { ip: '10.0.1.11', mac: '02:00:00:00:01:11' };
const APP = { ip: '10.0.2.21', mac: '02:00:00:00:02:21' };
const DB = { ip: '10.0.3.31', mac: '02:00:00:00:03:31' };

/** Bytes a batch may allocate: the clock's boxed double, with room for the sampled batch's two more. */
const BATCH_BYTES = 48;

/**
 * The data plane on in-memory ports for `policy` (an example's file name),
 * pumping `frames` into vNIC `nic` round and round. Sent frames are not
 * kept: the port's copy of each would be the test's allocation, not the
 * data plane's.
 */
function allocationLab(t: Test, policy: string, nic: string, frames: Uint8Array[], opts: { uplink?: boolean; staged?: boolean } = {}) {
  const compiled = policyCompile(policyParse(readFileSync(new URL(`../examples/${policy}`, import.meta.url), 'utf8'), policy, { shadows: false }).policy!);
  const specs: PortSpec[] = [...compiled.policy.workloads.values()].map((w) => ({ name: w.nic, mode: 'tap', workload: w.name }));
  if (opts.uplink) specs.push({ name: 'twu-up', mode: 'tap', workload: null });
  const ports = new Map<string, MemoryPort>();
  const dp = new Dataplane(compiled, specs, { flowCapacity: 1 << 17, flowLog: { rate: 1e6, burst: 1e6 }, portOpener: (s) => { const p = new MemoryPort(s.name, false); ports.set(s.name, p); return p; } });
  t.teardown(() => dp.stop());
  // A staged policy too, judged beside the enforced one on every new connection.
  if (opts.staged) dp.setStaged(policyCompile(compiled.policy));
  const from = dp.ports.findIndex((p) => p.spec.name === nic);
  const port = ports.get(nic)!;
  let next = 0;
  const pumpBatches = (batches: number, perBatch: number) => {
    for (let b = 0; b < batches; b++) {
      for (let j = 0; j < perBatch; j++) { port.pushFrame(frames[next]); next = next + 1 === frames.length ? 0 : next + 1; }
      dp.pump(from);
    }
  };
  // Each path compiled and settled first (the JIT's own allocations are not the hot path's).
  for (let round = 0; round < 4; round++) { pumpBatches(2000, 1); pumpBatches(200, 32); }
  return {
    dp,
    outcomes: () => Array.from(dp.outcomes.subarray(from * OUTCOME_COUNT, (from + 1) * OUTCOME_COUNT)),
    /**
     * The fewest bytes per batch over 8 windows of `batches` batches of
     * `perBatch` frames in which no collection ran (one that ran makes the
     * count meaningless); `between` runs before each window, outside it.
     */
    perBatch(perBatch: number, batches: number, between: () => void = () => {}): { bytes: number; windows: number } {
      let best = Infinity, windows = 0;
      for (let w = 0; w < 8; w++) {
        const profiler = new v8.GCProfiler();
        profiler.start();
        between();
        const a = v8.getHeapStatistics().used_heap_size;
        pumpBatches(batches, perBatch);
        const z = v8.getHeapStatistics().used_heap_size;
        if (profiler.stop().statistics.length > 0) continue;
        windows++;
        best = Math.min(best, (z - a) / batches);
      }
      return { bytes: best, windows };
    },
  };
}

t.test('a batch allocates only its clock reading, whatever its frames decide', async (t) => {
  // 60,000 different frames from web-1, so most are a new connection's first packet: allowed (app-api on
  // app-1), rejected by a logged rule (web to db), dropped by the default (tcp/9, udp/53, ping to app-1), an
  // ACK that belongs to no connection, an ARP request, a source address not web-1's. They come round again:
  // established, or refused again.
  const frames: Uint8Array[] = [];
  for (let k = 0; k < 60000; k++) {
    const sport = 1024 + (k >> 3);
    const kind = k & 7;
    const to = kind === 1 ? DB : APP;
    if (kind === 6) { frames.push(arpFrame({ srcMac: WEB.mac, op: 1, spa: WEB.ip, tpa: APP.ip })); continue; }
    const proto = kind === 4 ? 17 : kind === 5 ? 1 : 6;
    const dport = kind === 0 || kind === 3 || kind === 7 ? 8080 : kind === 1 ? 5432 : kind === 2 ? 9 : 53;
    frames.push(frameBuild({ family: 4, proto, src: kind === 7 ? '10.0.1.99' : WEB.ip, dst: to.ip, sport, dport, id: sport, flags: kind === 3 ? TCP_ACK : TCP_SYN, srcMac: WEB.mac, dstMac: to.mac }));
  }
  const lab = allocationLab(t, 'three-tier.yaml', 'tw-web1', frames, { staged: true });
  const dp = lab.dp;
  const before = lab.outcomes();
  // A new policy in force before each window (its swap is the control path's, outside the window): the sweep
  // judges every connection again, batch by batch, inside it.
  const reload = () => dp.setPolicy(policyCompile(dp.compiled.policy, dp.compiled));
  const single = lab.perBatch(1, 4000, reload);
  const full = lab.perBatch(32, 400, reload);
  const after = lab.outcomes();
  const moved = (o: Outcome) => after[o] - before[o];

  // The windows did what they say: frames forwarded and dropped by rules, none refused for a full table.
  t.ok(moved(Outcome.forward) > 10000, `frames forwarded in the windows: ${moved(Outcome.forward)}`);
  t.ok(moved(Outcome.reject) > 5000, `frames rejected in the windows: ${moved(Outcome.reject)}`);
  t.ok(moved(Outcome.policy) > 10000, `frames dropped by the default in the windows: ${moved(Outcome.policy)}`);
  t.ok(moved(Outcome.invalid_state) > 5000, `ACKs of no connection dropped in the windows: ${moved(Outcome.invalid_state)}`);
  t.ok(moved(Outcome.spoof) > 5000, `frames from an address not the sender's dropped in the windows: ${moved(Outcome.spoof)}`);
  t.ok(dp.ct.counters[CTC.revalidated] > 10000, `connections judged again under a new policy: ${dp.ct.counters[CTC.revalidated]}`);
  t.equal(moved(Outcome.table_full) + moved(Outcome.quota), 0, 'no frame refused for a full table or a quota');
  t.ok(single.windows >= 2 && full.windows >= 2, `windows without a collection: ${single.windows} and ${full.windows} of 8`);
  t.ok(single.bytes < BATCH_BYTES, `one frame a batch: ${single.bytes.toFixed(1)} bytes a batch (under ${BATCH_BYTES})`);
  t.ok(full.bytes < BATCH_BYTES, `32 frames a batch: ${full.bytes.toFixed(1)} bytes a batch (under ${BATCH_BYTES}, so nothing per frame)`);
});

t.test('IPv6 too: allowed, rejected, dropped, neighbour discovery, to the uplink', async (t) => {
  const FRONT = { ip: 'fd00:6::11', mac: '02:00:00:00:06:01' }, API = { ip: 'fd00:6::21', mac: '02:00:00:00:06:02' }, CACHE = { ip: 'fd00:6::31', mac: '02:00:00:00:06:03' };
  // front-1 to api-1 tcp/8443 (allowed), to cache-1 (rejected), a ping to api-1 (dropped by the default), a
  // neighbour solicitation for api-1, udp/53 to an address behind the uplink (dropped by the default).
  const frames: Uint8Array[] = [];
  for (let k = 0; k < 40000; k++) {
    const sport = 1024 + Math.floor(k / 5);
    switch (k % 5) {
      case 0: frames.push(frameBuild({ family: 6, proto: 6, src: FRONT.ip, dst: API.ip, sport, dport: 8443, flags: TCP_SYN, srcMac: FRONT.mac, dstMac: API.mac })); break;
      case 1: frames.push(frameBuild({ family: 6, proto: 6, src: FRONT.ip, dst: CACHE.ip, sport, dport: 6379, flags: TCP_SYN, srcMac: FRONT.mac, dstMac: CACHE.mac })); break;
      case 2: frames.push(frameBuild({ family: 6, proto: 58, src: FRONT.ip, dst: API.ip, icmpType: 128, id: sport, srcMac: FRONT.mac, dstMac: API.mac })); break;
      case 3: frames.push(ndFrame({ type: 135, srcMac: FRONT.mac, src: FRONT.ip, dst: 'ff02::1:ff00:21', target: API.ip, lla: FRONT.mac })); break;
      default: frames.push(frameBuild({ family: 6, proto: 17, src: FRONT.ip, dst: '2001:db8::5', sport, dport: 53, srcMac: FRONT.mac, dstMac: '02:00:00:00:00:fe' }));
    }
  }
  const lab = allocationLab(t, 'dual-stack.json', 'tw-front1', frames, { uplink: true });
  const before = lab.outcomes();
  const full = lab.perBatch(32, 400);
  const after = lab.outcomes();
  const moved = (o: Outcome) => after[o] - before[o];
  t.ok(moved(Outcome.forward) > 5000, `forwarded: ${moved(Outcome.forward)}`);
  t.ok(moved(Outcome.reject) > 5000, `rejected: ${moved(Outcome.reject)}`);
  t.ok(moved(Outcome.policy) > 10000, `dropped by the default: ${moved(Outcome.policy)}`);
  t.ok(full.windows >= 2, `windows without a collection: ${full.windows} of 8`);
  t.ok(full.bytes < BATCH_BYTES, `32 frames a batch: ${full.bytes.toFixed(1)} bytes a batch (under ${BATCH_BYTES})`);
});
