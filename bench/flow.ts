/**
 * `tapwall bench flow`: the flow cache and connection tracker on the per-packet
 * path, from raw frames.
 *
 *   lookup       parse a frame + find its connection (one probe);
 *   hit path     that + TCP state update + counters, through the batch entry
 *                point, over N established flows (1k, 100k, 1M), compared
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
import { Conntrack, ctProcess, ctProcessBatch } from '../src/flow/conntrack.js';
import { countGcDuring, machineInfo, median, type MachineInfo } from './machine.js';

const FRAME_STRIDE = 64;

/** N distinct TCP flows between two /16s, as frames with the given flags, back to back. */
function makeFrames(n: number, flags: number): { buf: Uint8Array; len: number } {
  const template = frameBuild({ family: 4, proto: 6, src: '10.1.0.1', dst: '10.2.0.1', sport: 1024, dport: 443, flags });
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
function benchPolicy() {
  const rules: Array<Record<string, string | string[]>> = [];
  for (let i = 0; i < BENCH_POLICY_RULES - 1; i++) {
    rules.push({ id: `deny-${i}`, from: `10.3.${(i >> 8) & 255}.${i & 255}/32`, to: 'servers', services: [`tcp/${1000 + (i % 20000)}`], action: 'drop' });
  }
  rules.push({ id: 'https', from: 'clients', to: 'servers', services: ['tcp/443'], action: 'allow' });
  const { policy, problems } = policyFromData({
    default: 'drop',
    workloads: {
      clients: { nic: 'tw-c', mac: '02:00:00:00:00:01', ips: ['10.1.0.1'] },
      servers: { nic: 'tw-s', mac: '02:00:00:00:00:02', ips: ['10.2.0.1'] },
    },
    groups: { clients: { cidrs: ['10.1.0.0/16'] }, servers: { cidrs: ['10.2.0.0/16'] } },
    sections: [{ name: 'app', rules }],
  }, 'bench');
  if (!policy) throw new Error(`bench policy invalid: ${problems.filter((p) => p.severity === 'error').map((p) => p.message).join('; ')}`);
  return policyCompile(policy);
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
  const decider = new PolicyDecider(compiled, ['tw-c', 'tw-s']);
  const pkt = new Int32Array(PKT_WORDS);
  const outcomes = new Int32Array(OUTCOME_COUNT);
  const flowCounts = opts.quick ? [1000, 100_000] : [1000, 100_000, 1_000_000];
  const hitPath: FlowBenchResult['hitPath'] = [];
  let gc = -1;
  let outcomesCheck = '';

  for (const n of flowCounts) {
    const table = new FlowTable({ capacity: Math.max(n, 1024), maxPorts: 4 });
    const ct = new Conntrack(table, decider, { loose: true }); // loose: the ACK frames open established entries
    const { buf, len } = makeFrames(n, TCP_ACK);
    const passes = Math.max(1, Math.floor(4_000_000 / n));
    const now = 1;
    // Warm-up: the first pass opens every connection, later ones hit.
    for (let i = 0; i < n; i++) {
      parseFrame(buf, i * FRAME_STRIDE, len, pkt);
      outcomes[ctProcess(ct, pkt, 0, 1, now)]++;
    }
    // The data plane's call: one batch of frames from one port at a time.
    const BATCH = 32;
    const offsets = new Int32Array(n), lengths = new Int32Array(n).fill(len), dest = new Int32Array(n).fill(1);
    for (let i = 0; i < n; i++) offsets[i] = i * FRAME_STRIDE;
    const batchOutcomes = new Uint8Array(BATCH), batchEntries = new Int32Array(BATCH);
    const hit = (): number => {
      let forwarded = 0;
      for (let p = 0; p < passes; p++) {
        for (let i = 0; i + BATCH <= n; i += BATCH) {
          forwarded += ctProcessBatch(ct, buf, offsets, lengths, i, BATCH, 0, dest, now, pkt, batchOutcomes, batchEntries);
        }
      }
      outcomes[Outcome.forward] += forwarded;
      return passes * (n - (n % BATCH));
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
    const rules = new Int32Array(2);
    const uncached = (): number => {
      let sink = 0;
      const m = Math.min(n, 200_000);
      const uncachedPasses = Math.max(1, Math.floor(passes / 4));
      for (let p = 0; p < uncachedPasses; p++) {
        for (let i = 0; i < m; i++) {
          parseFrame(buf, i * FRAME_STRIDE, len, pkt);
          sink ^= decider.decide(pkt, 0, 1, rules);
        }
      }
      if (sink === 0.5) console.log(sink);
      return m * uncachedPasses;
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
      let sent = 0;
      const before = outcomes[Outcome.forward];
      gc = await countGcDuring(() => {
        while (sent < 1_000_000) {
          for (let i = 0; i + BATCH <= n; i += BATCH) {
            outcomes[Outcome.forward] += ctProcessBatch(ct, buf, offsets, lengths, i, BATCH, 0, dest, now, pkt, batchOutcomes, batchEntries);
            sent += BATCH;
          }
        }
      });
      const forwarded = outcomes[Outcome.forward] - before;
      outcomesCheck = forwarded === sent ? `all ${sent} packets of the GC run forwarded` : `only ${forwarded} of ${sent} forwarded`;
    }
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
    'cache hits from raw frames, single thread. lookup: parse + flow-table probe; hit path: that + TCP state + counters, in batches of 32',
    `| flows | lookup | hit path | parse only | Map<string> cache | no cache (trie of ${BENCH_POLICY_RULES} rules per packet) | vs Map | vs no cache |`,
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
