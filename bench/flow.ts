/**
 * `tapwall bench flow`: the flow cache and connection tracker on the per-packet
 * path, from raw frames.
 *
 *   lookup       parse a frame + find its connection (one probe);
 *   hit path     the daemon's own per-frame loop (Dataplane.processBatch on
 *                in-memory ports: parse, SpoofGuard, steering, conntrack,
 *                counters, the transmit queue), over N established flows
 *                (1k, 100k, 1M) from behind the uplink to a VM, compared
 *                in the same run with: parsing alone (the floor), a JavaScript
 *                Map keyed by the tuple as a string (the obvious cache), and
 *                classifying every packet with the rule trie (no cache).
 *   inserts      raw table inserts of distinct tuples; and the whole new-
 *                connection path (parse a SYN, miss, decide, insert).
 *   memory       typed-array bytes of a table holding 1,000,000 connections,
 *                and the process's array-buffer growth when it was made.
 *   garbage      collections during 1,000,000 hit-path packets after warm-up.
 */
import { frameBuild } from '../src/packet/build.js';
import { PKT, PKT_WORDS, TCP_ACK, TCP_SYN, parseFrame } from '../src/packet/parse.js';
import { Outcome, OUTCOME_COUNT } from '../src/packet/verdict.js';
import { policyFromData } from '../src/policy/load.js';
import { policyCompile } from '../src/policy/compile.js';
import { PolicyDecider } from '../src/datapath/decide.js';
import { FlowTable, flowInsert, flowLookup } from '../src/flow/flowTable.js';
import { Conntrack, ctProcess } from '../src/flow/conntrack.js';
import { BATCH, Dataplane } from '../src/datapath/dataplane.js';
import type { PortIo } from '../src/io/ports.js';
import { countGcDuring, machineInfo, median, type MachineInfo } from './machine.js';

const FRAME_STRIDE = 64;
const CLIENT_MAC = '02:00:00:00:00:fe', SERVER_MAC = '02:00:00:00:00:02';

/** N distinct TCP flows from 10.1/16 (behind the uplink) to the server VM, as frames with the given flags, back to back. */
function makeFrames(n: number, flags: number): { buf: Uint8Array; len: number } {
  const template = frameBuild({ family: 4, proto: 6, src: '10.1.0.1', dst: '10.2.0.1', sport: 1024, dport: 443, flags, srcMac: CLIENT_MAC, dstMac: SERVER_MAC });
  const buf = new Uint8Array(n * FRAME_STRIDE);
  for (let i = 0; i < n; i++) {
    const o = i * FRAME_STRIDE;
    buf.set(template, o);
    // Vary the client address and port: 10.1.x.y:p (checksums are not checked here).
    const host = i >>> 6, port = 1024 + (i & 63);
    buf[o + 14 + 14] = (host >>> 8) & 255;
    buf[o + 14 + 15] = host & 255;
    buf[o + 34] = port >>> 8;
    buf[o + 35] = port & 255;
  }
  return { buf, len: template.length };
}

/**
 * The benchmark's policy: 10,000 rules, as a large deployment has. The
 * benchmark's own traffic (10.1/16 -> 10.2/16, tcp/443) is allowed by the
 * last one, so an uncached packet walks the trie of all of them.
 */
export const BENCH_POLICY_RULES = 10_000;
function benchPolicy(stateless = false) {
  const rules: Array<Record<string, string | string[] | boolean>> = [];
  for (let i = 0; i < BENCH_POLICY_RULES - 1; i++) {
    rules.push({ id: `deny-${i}`, from: `10.3.${(i >> 8) & 255}.${i & 255}/32`, to: 'servers', services: [`tcp/${1000 + (i % 20000)}`], action: 'drop' });
  }
  // Stateless: every packet is classified (no connection is kept), the daemon's loop without its cache.
  rules.push({ id: 'https', from: 'clients', to: 'servers', services: ['tcp/443'], action: 'allow', ...(stateless ? { stateless: true } : {}) });
  const { policy, problems } = policyFromData({
    default: 'drop',
    workloads: {
      servers: { nic: 'tw-s', mac: SERVER_MAC, ips: ['10.2.0.1'] },
    },
    groups: { clients: { cidrs: ['10.1.0.0/16'] }, servers: { cidrs: ['10.2.0.0/16'] } },
    sections: [{ name: 'app', rules }],
  }, 'bench');
  if (!policy) throw new Error(`bench policy invalid: ${problems.filter((p) => p.severity === 'error').map((p) => p.message).join('; ')}`);
  return policyCompile(policy);
}

/**
 * The uplink as the daemon reads it: each read hands over the next BATCH
 * frames of the flows (copied into the data plane's buffer, as a read from
 * a device copies), until `budget` frames have gone.
 */
class ReplayPort implements PortIo {
  readonly mode = 'tap' as const;
  readonly vnetHdr = 0;
  budget = 0;
  private next = 0;
  constructor(readonly name: string, private readonly frames: Uint8Array, private readonly count: number, private readonly len: number) {}
  start(): void {}
  dropped(): number { return 0; }
  read(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, max: number, stride: number): number {
    const n = Math.min(max, this.budget);
    const frames = this.frames, len = this.len;
    for (let i = 0; i < n; i++) {
      const o = this.next * FRAME_STRIDE, d = i * stride;
      for (let k = 0; k < len; k++) buf[d + k] = frames[o + k]; // no subarray: nothing allocated per frame
      offsets[i] = i * stride;
      lengths[i] = len;
      this.next = this.next + 1 === this.count ? 0 : this.next + 1;
    }
    this.budget -= n;
    return n;
  }
  write(): number { return 0; }
  close(): void {}
}

/** The VM: takes every frame written to it, keeps nothing. */
class SinkPort implements PortIo {
  readonly mode = 'tap' as const;
  readonly vnetHdr = 0;
  constructor(readonly name: string) {}
  start(): void {}
  dropped(): number { return 0; }
  read(): number { return 0; }
  write(_buf: Uint8Array, _offsets: Int32Array, _lengths: Int32Array, count: number): number { return count; }
  close(): void {}
}

/**
 * The daemon's data plane with its ports in memory: the uplink (port 1)
 * replays the flows' frames, the server VM (port 0) takes them. drive(k)
 * sends k frames through Dataplane.pump, as readable events would.
 */
function daemonLoop(compiled: ReturnType<typeof benchPolicy>, n: number, buf: Uint8Array, len: number) {
  let uplink: ReplayPort | null = null;
  const dp = new Dataplane(compiled, [{ name: 'tw-s', mode: 'tap', workload: 'servers' }, { name: 'tw-up', mode: 'tap', workload: null }], {
    flowCapacity: Math.max(n, 1024),
    loose: true, // the ACK frames open established entries
    portOpener: (spec) => (spec.workload === null ? (uplink = new ReplayPort(spec.name, buf, n, len)) : new SinkPort(spec.name)),
  });
  const UP = 1;
  return {
    dp,
    forwarded: () => dp.outcomes[UP * OUTCOME_COUNT + Outcome.forward],
    drive(frames: number): void {
      uplink!.budget = frames;
      while (uplink!.budget > 0) dp.pump(UP);
    },
  };
}

function rate(fn: () => number, rounds: number): number {
  const rates: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    const n = fn();
    rates.push(n / ((performance.now() - t0) / 1000));
  }
  return median(rates);
}

export interface FlowBenchResult {
  machine: MachineInfo;
  hitPath: Array<{ flows: number; perSec: number; lookupPerSec: number; parseOnlyPerSec: number; mapCachePerSec: number; uncachedClassifyPerSec: number; vsMap: number; vsUncached: number }>;
  rawInsertsPerSec: number;
  newConnectionsPerSec: number;
  memory: { flows: number; tableBytes: number; bytesPerFlow: number; arrayBufferGrowth: number };
  gcDuringMillionPackets: number;
  outcomesCheck: string;
}

export async function benchFlow(opts: { quick?: boolean } = {}): Promise<FlowBenchResult> {
  const rounds = opts.quick ? 3 : 5;
  const compiled = benchPolicy();
  const statelessCompiled = benchPolicy(true);
  const decider = new PolicyDecider(compiled, ['tw-c', 'tw-s']);
  const pkt = new Int32Array(PKT_WORDS);
  const outcomes = new Int32Array(OUTCOME_COUNT);
  const flowCounts = opts.quick ? [1000, 100_000] : [1000, 100_000, 1_000_000];
  const hitPath: FlowBenchResult['hitPath'] = [];
  let gc = -1;
  let outcomesCheck = '';

  for (const n of flowCounts) {
    const { buf, len } = makeFrames(n, TCP_ACK);
    const cached = daemonLoop(compiled, n, buf, len);
    const table = cached.dp.table;
    const passes = Math.max(1, Math.floor(4_000_000 / n));
    cached.drive(n); // warm-up: the first pass opens every connection, later ones hit
    const hit = (): number => {
      cached.drive(passes * n);
      return passes * n;
    };
    const stateless = daemonLoop(statelessCompiled, n, buf, len);
    const uncached = (): number => {
      const m = Math.max(BATCH, Math.floor((passes * n) / 4));
      stateless.drive(m);
      return m;
    };
    const t = table;
    const lookupOnly = (): number => {
      let sink = 0;
      for (let p = 0; p < passes; p++) {
        for (let i = 0; i < n; i++) {
          parseFrame(buf, i * FRAME_STRIDE, len, pkt);
          sink ^= flowLookup(t, pkt, PKT.src, PKT.dst, pkt[PKT.sport], pkt[PKT.dport], pkt[PKT.proto], pkt[PKT.family], 0);
        }
      }
      if (sink === 0.5) console.log(sink);
      return passes * n;
    };
    const parseOnly = (): number => {
      let sink = 0;
      for (let p = 0; p < passes; p++) {
        for (let i = 0; i < n; i++) sink ^= parseFrame(buf, i * FRAME_STRIDE, len, pkt) ^ pkt[PKT.sport];
      }
      if (sink === 0.5) console.log(sink);
      return passes * n;
    };
    const map = new Map<string, number>();
    const mapCache = (): number => {
      let sink = 0;
      const m = Math.min(n, 200_000); // the Map baseline is slow: a bounded share of the flows
      for (let p = 0; p < passes; p++) {
        for (let i = 0; i < m; i++) {
          parseFrame(buf, i * FRAME_STRIDE, len, pkt);
          const key = `${pkt[PKT.src]}:${pkt[PKT.sport]}>${pkt[PKT.dst]}:${pkt[PKT.dport]}/${pkt[PKT.proto]}`;
          let v = map.get(key);
          if (v === undefined) { v = i; map.set(key, v); }
          sink ^= v;
        }
      }
      if (sink === 0.5) console.log(sink);
      return passes * m;
    };
    mapCache(); // fill the Map before timing lookups in it
    const perSec = rate(hit, rounds);
    const lookupPerSec = rate(lookupOnly, rounds);
    const parseOnlyPerSec = rate(parseOnly, rounds);
    const mapCachePerSec = rate(mapCache, rounds);
    const uncachedClassifyPerSec = rate(uncached, rounds);
    hitPath.push({
      flows: n, perSec: Math.round(perSec), lookupPerSec: Math.round(lookupPerSec), parseOnlyPerSec: Math.round(parseOnlyPerSec), mapCachePerSec: Math.round(mapCachePerSec),
      uncachedClassifyPerSec: Math.round(uncachedClassifyPerSec),
      vsMap: Number((perSec / mapCachePerSec).toFixed(1)), vsUncached: Number((perSec / uncachedClassifyPerSec).toFixed(1)),
    });
    if (n === 1000) {
      const sent = 1_000_000 - (1_000_000 % BATCH);
      const before = cached.forwarded();
      gc = await countGcDuring(() => cached.drive(sent));
      const got = cached.forwarded() - before;
      outcomesCheck = got === sent ? `all ${sent} packets of the GC run forwarded` : `only ${got} of ${sent} forwarded`;
    }
    cached.dp.stop();
    stateless.dp.stop();
  }

  // Raw inserts of distinct tuples into an empty table.
  const insertN = opts.quick ? 200_000 : 1_000_000;
  const keys = new Int32Array(insertN * 2);
  for (let i = 0; i < insertN; i++) { keys[2 * i] = 0x0a010000 + (i >>> 6); keys[2 * i + 1] = 1024 + (i & 63); }
  const k = new Int32Array(8);
  k[4] = 0x0a020001;
  const insertRates: number[] = [];
  for (let r = 0; r < (opts.quick ? 2 : 3); r++) {
    const table = new FlowTable({ capacity: insertN, maxPorts: 4 }); // allocation is not timed
    const t0 = performance.now();
    for (let i = 0; i < insertN; i++) {
      k[0] = keys[2 * i];
      flowInsert(table, k, 0, 4, keys[2 * i + 1], 443, 6, 4, 0, 1, false, 1);
    }
    insertRates.push(insertN / ((performance.now() - t0) / 1000));
  }
  const rawInsertsPerSec = median(insertRates);

  // The whole new-connection path: SYN frames, miss, decide, insert.
  const syn = makeFrames(insertN, TCP_SYN);
  const newRates: number[] = [];
  for (let r = 0; r < (opts.quick ? 2 : 3); r++) {
    const ct = new Conntrack(new FlowTable({ capacity: insertN, maxPorts: 4 }), decider);
    const t0 = performance.now();
    for (let i = 0; i < insertN; i++) {
      parseFrame(syn.buf, i * FRAME_STRIDE, syn.len, pkt);
      outcomes[ctProcess(ct, pkt, 0, 1, 1)]++;
    }
    newRates.push(insertN / ((performance.now() - t0) / 1000));
  }
  const newConnectionsPerSec = median(newRates);

  // Memory of a million concurrent connections.
  const before = process.memoryUsage().arrayBuffers;
  const big = new FlowTable({ capacity: 1_000_000, maxPorts: 4 });
  const grown = process.memoryUsage().arrayBuffers - before;
  for (let i = 0; i < 1_000_000; i++) {
    k[0] = 0x0a010000 + (i >>> 6);
    flowInsert(big, k, 0, 4, 1024 + (i & 63), 443, 6, 4, 0, 1, false, 1);
  }
  const memory = { flows: big.live, tableBytes: big.bytes, bytesPerFlow: Math.round(big.bytes / big.live), arrayBufferGrowth: grown };

  return { machine: machineInfo(), hitPath, rawInsertsPerSec: Math.round(rawInsertsPerSec), newConnectionsPerSec: Math.round(newConnectionsPerSec), memory, gcDuringMillionPackets: gc, outcomesCheck };
}

export function formatFlowBench(r: FlowBenchResult): string {
  const m = r.machine;
  const M = (x: number) => `${(x / 1e6).toFixed(2)} M/s`;
  const lines = [
    `machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.kernel}, Node.js ${m.node}`,
    `cache hits from raw frames, single thread. lookup: parse + flow-table probe; hit path: the daemon's per-frame loop (read copy, parse, SpoofGuard, steering, conntrack, counters, transmit queue), batches of ${BATCH}`,
    `| flows | lookup | hit path | parse only | Map<string> cache | daemon loop, no cache (a stateless rule: trie of ${BENCH_POLICY_RULES} rules per packet) | vs Map | vs no cache |`,
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.hitPath.map((h) => `| ${h.flows} | ${M(h.lookupPerSec)} | ${M(h.perSec)} | ${M(h.parseOnlyPerSec)} | ${M(h.mapCachePerSec)} | ${M(h.uncachedClassifyPerSec)} | ${h.vsMap}x | ${h.vsUncached}x |`),
    `inserts:          ${M(r.rawInsertsPerSec)} (raw table inserts of distinct tuples)`,
    `new connections:  ${M(r.newConnectionsPerSec)} (parse SYN + miss + decision by the ${BENCH_POLICY_RULES}-rule policy + insert)`,
    `memory:           ${(r.memory.tableBytes / 2 ** 20).toFixed(1)} MiB for ${r.memory.flows} connections (${r.memory.bytesPerFlow} bytes each; array buffers grew ${(r.memory.arrayBufferGrowth / 2 ** 20).toFixed(1)} MiB)`,
    `gc:               ${r.gcDuringMillionPackets} collections during 1,000,000 hit-path packets after warm-up`,
    `check:            ${r.outcomesCheck}`,
  ];
  return lines.join('\n');
}
