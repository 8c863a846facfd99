/**
 * `tapwall bench classify-scaling`: the trie against the linear scan across
 * rule-set sizes, from the shipped 1k-4k ClassBench sets to the 16k and 64k
 * sets grown from them (bench/classbench-scale.ts, generated on first use
 * into bench/data/). Prints one table row per set, then the machine.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { benchClassify, type ClassifyBenchResult } from './classify.js';
import { classbenchScale } from './classbench-scale.js';
import { machineLine } from './machine.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

export interface ScalingOptions { quick?: boolean; families?: string[]; sizes?: string[]; log?: (line: string) => void }

export async function benchClassifyScaling(opts: ScalingOptions = {}): Promise<ClassifyBenchResult[]> {
  const log = opts.log ?? ((l: string) => process.stdout.write(`${l}\n`));
  const families = opts.families ?? ['acl1', 'fw1', 'ipc1'];
  const sizes = opts.sizes ?? (opts.quick ? ['1k', '4k', '16k'] : ['1k', '2k', '4k', '16k', '64k']);
  const dataDir = `${root}bench/data`;
  mkdirSync(dataDir, { recursive: true });
  const results: ClassifyBenchResult[] = [];
  log(machineLine());
  log('| set | rules | trie lookups/s | linear lookups/s | trie / linear | build ms | bytes/rule | GCs per 1M lookups |');
  log('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const fam of families) {
    for (const size of sizes) {
      let rules: string, trace: string;
      if (size.endsWith('k') && Number(size.slice(0, -1)) <= 4) {
        rules = `${root}data/classbench/${size}/${fam}_seed_1.rules`;
        trace = `${root}data/classbench/${size}/${fam}_seed_1.trace`;
      } else {
        const prefix = `${dataDir}/${fam}_${size}`;
        rules = `${prefix}.rules`;
        trace = `${prefix}.trace`;
        if (!existsSync(rules) || !existsSync(trace)) {
          classbenchScale(`${root}data/classbench/4k/${fam}_seed_1.rules`, Number(size.slice(0, -1)) * 1000, 100_000, prefix, 1);
        }
      }
      const r = await benchClassify(rules, trace, { rounds: opts.quick ? 2 : 5, roundMs: opts.quick ? 200 : 400 });
      results.push(r);
      log(`| ${fam} ${size} | ${r.ruleCount} | ${(r.trieLookupsPerSec / 1e6).toFixed(2)} M | ${(r.linearLookupsPerSec / 1e6).toFixed(3)} M | ${r.speedup}x | ${r.buildMs} | ${r.bytesPerRule} | ${r.gcDuringMillionLookups} |${r.mismatches ? ` ${r.mismatches} MISMATCHES` : ''}`);
    }
  }
  return results;
}
