/**
 * Larger ClassBench-like rule sets (16k, 64k rules) grown from a shipped seed
 * set, so that classifier scaling can be shown without ClassBench's own
 * generator. The procedure, deterministic for a given seed:
 *
 *   1. Each new rule copies a template rule drawn uniformly from the seed set:
 *      its prefix lengths, port ranges and protocol stay as they are, so the
 *      distributions that make acl, fw and ipc sets differ are kept.
 *   2. Each address prefix of length L keeps the template's top min(L, 8)
 *      bits (so rules stay clustered under the same /8s as the seed set, as
 *      real address plans are) and draws its remaining L - 8 bits at random.
 *   3. Exact duplicates of an earlier rule are drawn again.
 *   4. New rules are ordered by their template's position (stable): the broad
 *      rules that close a seed set (down to the catch-all) close the grown set
 *      too, instead of landing early and hiding everything after them.
 *   5. The trace draws, for each packet, a rule uniformly and a header
 *      uniformly inside its box (a wildcard protocol becomes TCP, UDP or
 *      ICMP); the last column is that rule's 0-based index, as in the
 *      shipped traces.
 *
 * Output is in ClassBench's own format, so every tool here reads it.
 */
import { writeFileSync } from 'node:fs';
import { readClassbenchRules, CLASSBENCH_DIMS } from '../tools/classbench.js';
import { prng } from '../tools/prng.js';

const KEEP_TOP_BITS = 8;

function prefixLength(lo: number, hi: number): number {
  return 32 - Math.log2(hi - lo + 1);
}

function ipText(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

export interface ScaleResult { rules: number; packets: number; rulesFile: string; traceFile: string }

export function classbenchScale(seedRules: string, count: number, packets: number, outPrefix: string, seed = 1): ScaleResult {
  const base = readClassbenchRules(seedRules);
  if (base.count === 0) throw new Error(`${seedRules} holds no rules`);
  const rand = prng(seed);
  const D = CLASSBENCH_DIMS;
  const lo = new Float64Array(count * D), hi = new Float64Array(count * D);
  const seen = new Set<string>();
  const drawn: Array<{ tpl: number; lo: number[]; hi: number[] }> = [];
  const cur = { lo: new Float64Array(D), hi: new Float64Array(D) };
  let attempts = 0;
  while (drawn.length < count) {
    if (++attempts > count * 100) throw new Error(`${seedRules} is too small or too uniform to grow ${count} distinct rules from`);
    const tpl = Math.floor(rand() * base.count);
    const { lo: rl, hi: rh } = cur;
    for (const d of [0, 1]) {
      const tLo = base.lo[tpl * D + d], tHi = base.hi[tpl * D + d];
      const len = prefixLength(tLo, tHi);
      let v = tLo;
      if (len > KEEP_TOP_BITS) {
        const randomBits = len - KEEP_TOP_BITS;
        const fresh = Math.floor(rand() * 2 ** randomBits) * 2 ** (32 - len);
        v = Math.floor(tLo / 2 ** (32 - KEEP_TOP_BITS)) * 2 ** (32 - KEEP_TOP_BITS) + fresh;
      }
      rl[d] = v;
      rh[d] = v + (tHi - tLo);
    }
    for (let d = 2; d < D; d++) { rl[d] = base.lo[tpl * D + d]; rh[d] = base.hi[tpl * D + d]; }
    const sig = `${rl.join(',')}|${rh.join(',')}`;
    if (seen.has(sig)) continue;
    seen.add(sig);
    drawn.push({ tpl, lo: Array.from(rl), hi: Array.from(rh) });
  }
  drawn.sort((a, b) => a.tpl - b.tpl); // stable: keeps draw order within a template
  const lines: string[] = [];
  for (let r = 0; r < count; r++) {
    const o = r * D;
    for (let d = 0; d < D; d++) { lo[o + d] = drawn[r].lo[d]; hi[o + d] = drawn[r].hi[d]; }
    const len = (d: number) => prefixLength(lo[o + d], hi[o + d]);
    const proto = lo[o + 2] === hi[o + 2] ? `0x${lo[o + 2].toString(16).padStart(2, '0').toUpperCase()}/0xFF` : '0x00/0x00';
    lines.push(`@${ipText(lo[o])}/${len(0)}\t${ipText(lo[o + 1])}/${len(1)}\t${lo[o + 3]} : ${hi[o + 3]}\t${lo[o + 4]} : ${hi[o + 4]}\t${proto}\t0x0000/0x0000\t`);
  }
  const trace: string[] = [];
  const within = (a: number, b: number) => a + Math.floor(rand() * (b - a + 1));
  for (let i = 0; i < packets; i++) {
    const r = Math.floor(rand() * count);
    const o = r * D;
    const proto = lo[o + 2] === hi[o + 2] ? lo[o + 2] : [6, 17, 1][Math.floor(rand() * 3)];
    trace.push(`${within(lo[o], hi[o])}\t${within(lo[o + 1], hi[o + 1])}\t${within(lo[o + 3], hi[o + 3])}\t${within(lo[o + 4], hi[o + 4])}\t${proto}\t0\t${r}`);
  }
  const rulesFile = `${outPrefix}.rules`, traceFile = `${outPrefix}.trace`;
  writeFileSync(rulesFile, `${lines.join('\n')}\n`);
  writeFileSync(traceFile, `${trace.join('\n')}\n`);
  return { rules: count, packets, rulesFile, traceFile };
}
