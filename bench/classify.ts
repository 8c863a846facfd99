/**
 * `tapwall bench classify RULES TRACE`: the rule trie against a linear scan of
 * the same rules, on the same packets, in the same run.
 *
 * Rounds alternate trie and linear so that both see the same machine noise;
 * each figure is the median of its rounds. Lookups are uncached: every packet
 * of the trace goes through the classifier, cycling over the trace.
 */
import { readClassbenchRules, readClassbenchTrace, CLASSBENCH_DIMS } from '../tools/classbench.js';
import { linearLookup, trieBuild, trieLookup, type RuleTrie } from '../src/classify/ruleTrie.js';
import { countGcDuring, machineInfo, median, type MachineInfo } from './machine.js';

export interface ClassifyBenchResult {
  machine: MachineInfo;
  rules: string;
  trace: string;
  ruleCount: number;
  packets: number;
  trieLookupsPerSec: number;
  linearLookupsPerSec: number;
  speedup: number;
  buildMs: number;
  compiledBytes: number;
  bytesPerRule: number;
  gcDuringMillionLookups: number;
  trie: RuleTrie['stats'];
  mismatches: number;
}

function timeLookups(lookup: (t: RuleTrie, k: Int32Array, o: number) => number, t: RuleTrie, keys: Int32Array, packets: number, budgetMs: number): number {
  let n = 0, sink = 0, j = 0;
  const started = performance.now();
  let elapsed = 0;
  // Check the clock once per 4096 lookups so timing costs nothing measurable.
  do {
    for (let i = 0; i < 4096; i++) {
      sink ^= lookup(t, keys, j * CLASSBENCH_DIMS);
      if (++j === packets) j = 0;
    }
    n += 4096;
    elapsed = performance.now() - started;
  } while (elapsed < budgetMs);
  if (sink === 0.5) console.log(sink); // keep the result alive
  return (n / elapsed) * 1000;
}

export async function benchClassify(rulesPath: string, tracePath: string, opts: { rounds?: number; roundMs?: number } = {}): Promise<ClassifyBenchResult> {
  const rounds = opts.rounds ?? 5;
  const roundMs = opts.roundMs ?? 400;
  const rules = readClassbenchRules(rulesPath);
  const trace = readClassbenchTrace(tracePath);
  const builds: number[] = [];
  let t!: RuleTrie;
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    t = trieBuild(CLASSBENCH_DIMS, rules.count, rules.lo, rules.hi);
    builds.push(performance.now() - started);
  }
  let mismatches = 0;
  for (let i = 0; i < trace.count; i++) {
    if (trieLookup(t, trace.keys, i * CLASSBENCH_DIMS) !== linearLookup(t, trace.keys, i * CLASSBENCH_DIMS)) mismatches++;
  }
  const trieRates: number[] = [], linearRates: number[] = [];
  for (let r = 0; r < rounds; r++) {
    trieRates.push(timeLookups(trieLookup, t, trace.keys, trace.count, roundMs));
    linearRates.push(timeLookups(linearLookup, t, trace.keys, trace.count, roundMs / 2));
  }
  const gc = await countGcDuring(() => {
    let sink = 0;
    for (let i = 0, j = 0; i < 1_000_000; i++) {
      sink ^= trieLookup(t, trace.keys, j * CLASSBENCH_DIMS);
      if (++j === trace.count) j = 0;
    }
    if (sink === 0.5) console.log(sink);
  });
  const trieRate = median(trieRates), linearRate = median(linearRates);
  return {
    machine: machineInfo(),
    rules: rulesPath,
    trace: tracePath,
    ruleCount: rules.count,
    packets: trace.count,
    trieLookupsPerSec: Math.round(trieRate),
    linearLookupsPerSec: Math.round(linearRate),
    speedup: Number((trieRate / linearRate).toFixed(1)),
    buildMs: Number(median(builds).toFixed(2)),
    compiledBytes: t.stats.bytes,
    bytesPerRule: Number((t.stats.bytes / rules.count).toFixed(1)),
    gcDuringMillionLookups: gc,
    trie: t.stats,
    mismatches,
  };
}

export function formatClassifyBench(r: ClassifyBenchResult): string {
  const m = r.machine;
  return [
    `machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.kernel}, Node.js ${m.node}`,
    `rules:   ${r.rules} (${r.ruleCount} rules)`,
    `trace:   ${r.trace} (${r.packets} packets)`,
    `trie:    ${(r.trieLookupsPerSec / 1e6).toFixed(2)} M lookups/s`,
    `linear:  ${(r.linearLookupsPerSec / 1e6).toFixed(3)} M lookups/s`,
    `ratio:   trie is ${r.speedup}x the linear scan`,
    `build:   ${r.buildMs} ms`,
    `memory:  ${r.compiledBytes} bytes (${r.bytesPerRule} bytes per rule; ${r.trie.nodes} nodes, ${r.trie.leaves} leaves, ${r.trie.leafEntries} leaf entries, depth ${r.trie.maxDepth}, largest leaf ${r.trie.maxLeaf}, partitions ${r.trie.partitions.join('/')})`,
    `gc:      ${r.gcDuringMillionLookups} collections during 1,000,000 lookups`,
    `check:   ${r.mismatches === 0 ? 'every trace packet got the same rule as the linear scan' : `${r.mismatches} packets differ from the linear scan`}`,
  ].join('\n');
}
