// Randomised differential tests: the rule trie against the naive matcher on
// random rule lists (overlapping prefixes, nested ranges, wildcards, IPv6
// layouts) and random packets that favour edge values.
import t from 'tap';
import { bias, kthSmallest, trieBuild, trieLookup } from '../src/classify/ruleTrie.js';
import { naiveFirstMatch, type BoxRule } from './reference.js';
import { pick, randInt, rng } from './rng.js';

const FULL = 0xffffffff;

/** A random prefix in a 32-bit word, drawn from a few shared roots so that rules overlap. */
function prefixRange(r: () => number, roots: number[]): [number, number] {
  const len = pick(r, [0, 0, 1, 8, 16, 24, 28, 31, 32, 32, randInt(r, 0, 32)]);
  if (len === 0) return [0, FULL];
  const base = pick(r, roots) ^ (r() < 0.3 ? randInt(r, 0, 0xffff) : 0);
  const size = 2 ** (32 - len);
  const lo = Math.floor((base >>> 0) / size) * size;
  return [lo, lo + size - 1];
}

function portRange(r: () => number): [number, number] {
  switch (randInt(r, 0, 5)) {
    case 0: return [0, 65535];
    case 1: { const p = pick(r, [0, 1, 22, 80, 443, 1023, 1024, 65535]); return [p, p]; }
    case 2: return [0, 1023];
    case 3: return [1024, 65535];
    default: { const a = randInt(r, 0, 65535), b = randInt(r, 0, 65535); return [Math.min(a, b), Math.max(a, b)]; }
  }
}

function protoRange(r: () => number): [number, number] {
  const p = pick(r, [-1, -1, 6, 17, 1, 58, 0, 255]);
  return p < 0 ? [0, 255] : [p, p];
}

/** IPv4 layout: src, dst, proto, sport, dport. IPv6: 4 words src, 4 words dst, proto, sport, dport. */
function randomRules(r: () => number, count: number, v6: boolean): BoxRule[] {
  const roots = Array.from({ length: 6 }, () => randInt(r, 0, FULL));
  const rules: BoxRule[] = [];
  for (let i = 0; i < count; i++) {
    const lo: number[] = [], hi: number[] = [];
    for (const _side of [0, 1]) {
      if (!v6) { const [a, b] = prefixRange(r, roots); lo.push(a); hi.push(b); continue; }
      // A /len IPv6 prefix: whole words exact, one partial word, then wildcards.
      const len = pick(r, [0, 32, 48, 64, 96, 120, 128, randInt(r, 0, 128)]);
      for (let w = 0; w < 4; w++) {
        const bits = len - w * 32;
        const word = pick(r, roots);
        if (bits >= 32) { lo.push(word >>> 0); hi.push(word >>> 0); }
        else if (bits <= 0) { lo.push(0); hi.push(FULL); }
        else { const size = 2 ** (32 - bits); const l = Math.floor((word >>> 0) / size) * size; lo.push(l); hi.push(l + size - 1); }
      }
    }
    for (const [a, b] of [protoRange(r), portRange(r), portRange(r)]) { lo.push(a); hi.push(b); }
    rules.push({ lo, hi });
  }
  return rules;
}

function randomKey(r: () => number, rules: BoxRule[], dims: number): number[] {
  // Half the packets are drawn inside a rule (often on its edges), half anywhere.
  if (rules.length > 0 && r() < 0.6) {
    const rule = pick(r, rules);
    return rule.lo.map((lo, d) => {
      const hi = rule.hi[d];
      const c = randInt(r, 0, 3);
      return c === 0 ? lo : c === 1 ? hi : lo + Math.floor(r() * (hi - lo + 1));
    });
  }
  return Array.from({ length: dims }, (_, d) => {
    const isPort = d >= dims - 2, isProto = d === dims - 3;
    if (isProto) return pick(r, [0, 1, 6, 17, 58, 255]);
    if (isPort) return pick(r, [0, 1, 80, 1023, 1024, 65535, randInt(r, 0, 65535)]);
    return pick(r, [0, FULL, randInt(r, 0, FULL)]);
  });
}

function check(t: Tap.Test, seed: number, v6: boolean, count: number, packets: number, leafSize: number): void {
  const r = rng(seed);
  const dims = v6 ? 11 : 5;
  const rules = randomRules(r, count, v6);
  const lo = rules.flatMap((x) => x.lo), hi = rules.flatMap((x) => x.hi);
  const trie = trieBuild(dims, count, lo, hi, v6 ? { srcDims: [0], dstDims: [4], leafSize } : { leafSize });
  const key = new Int32Array(dims);
  let bad = 0;
  let first = '';
  for (let i = 0; i < packets; i++) {
    const k = randomKey(r, rules, dims);
    for (let d = 0; d < dims; d++) key[d] = bias(k[d]);
    const got = trieLookup(trie, key, 0);
    const want = naiveFirstMatch(rules, k);
    if (got !== want) {
      bad++;
      if (!first) first = ` e.g. key ${k.join(',')}: trie ${got}, naive ${want}`;
    }
  }
  t.equal(bad, 0, `seed ${seed} ${v6 ? 'IPv6' : 'IPv4'} ${count} rules leaf ${leafSize}: ${packets} packets agree${first}`);
}

declare namespace Tap { type Test = typeof t; }

t.test('IPv4 layout', async (t) => {
  for (let seed = 1; seed <= 30; seed++) check(t, seed, false, pick(rng(seed), [0, 1, 2, 5, 20, 100, 400, 1500]), 3000, pick(rng(seed * 7), [1, 2, 8, 16]));
});

t.test('IPv6 layout', async (t) => {
  for (let seed = 101; seed <= 125; seed++) check(t, seed, true, pick(rng(seed), [1, 3, 20, 100, 600]), 3000, pick(rng(seed * 7), [1, 4, 8]));
});

t.test('edge values: /0 and /32 prefixes, ports 0 and 65535', async (t) => {
  const rules: BoxRule[] = [
    { lo: [0xffffffff, 0, 6, 0, 65535], hi: [0xffffffff, 0xffffffff, 6, 0, 65535] },
    { lo: [0, 0, 0, 65535, 0], hi: [0, 0xffffffff, 255, 65535, 0] },
    { lo: [0x80000000, 0, 0, 0, 0], hi: [0x80000000, 0x7fffffff, 255, 65535, 65535] },
    { lo: [0, 0, 0, 0, 0], hi: [0xffffffff, 0xffffffff, 255, 65535, 65535] },
  ];
  const trie = trieBuild(5, rules.length, rules.flatMap((x) => x.lo), rules.flatMap((x) => x.hi), { leafSize: 1 });
  const cases: Array<[number[], number]> = [
    [[0xffffffff, 5, 6, 0, 65535], 0],
    [[0xffffffff, 5, 6, 1, 65535], 3],
    [[0, 0, 17, 65535, 0], 1],
    [[0, 0, 17, 65534, 0], 3],
    [[0x80000000, 0x7fffffff, 1, 0, 0], 2],
    [[0x80000000, 0x80000000, 1, 0, 0], 3],
    [[0x7fffffff, 0, 0, 0, 0], 3],
  ];
  const key = new Int32Array(5);
  for (const [k, want] of cases) {
    k.forEach((v, d) => { key[d] = bias(v); });
    t.equal(trieLookup(trie, key, 0), want, `key ${k.join(',')} -> rule ${want}`);
    t.equal(naiveFirstMatch(rules, k), want, `naive agrees for ${k.join(',')}`);
  }
  const empty = trieBuild(5, 0, [], []);
  t.equal(trieLookup(empty, key, 0), -1, 'an empty rule list matches nothing');
});


t.test('wildcard-heavy random ranges: memory stays bounded and answers stay exact', async (t) => {
  // Random ranges in every field make almost every rule straddle every split:
  // unbounded, this set grew past 100 million leaf entries.
  const r = rng(4242);
  const count = 800;
  const lo: number[] = [], hi: number[] = [];
  const maxes = [FULL, FULL, 255, 65535, 65535];
  for (let i = 0; i < count; i++) {
    for (const max of maxes) {
      let a = randInt(r, 0, max), b = randInt(r, 0, max);
      if (a > b) [a, b] = [b, a];
      if (r() < 0.3) { a = 0; b = max; }
      lo.push(a); hi.push(b);
    }
  }
  const budgetPerRule = 64;
  const trie = trieBuild(5, count, lo, hi, { budgetPerRule });
  t.ok(trie.nodes.length + trie.leaves.length <= budgetPerRule * count + 1024 + count, `bounded: ${trie.nodes.length + trie.leaves.length} words for ${count} rules`);
  t.ok(Math.max(...trie.stats.leafSizes) > 4, `the build went coarser (leaf sizes ${trie.stats.leafSizes.join(',')})`);
  const rules: BoxRule[] = Array.from({ length: count }, (_, i) => ({ lo: lo.slice(i * 5, i * 5 + 5), hi: hi.slice(i * 5, i * 5 + 5) }));
  const key = new Int32Array(5);
  let bad = 0;
  for (let i = 0; i < 3000; i++) {
    const k = randomKey(r, rules, 5);
    for (let d = 0; d < 5; d++) key[d] = bias(k[d]);
    if (trieLookup(trie, key, 0) !== naiveFirstMatch(rules, k)) bad++;
  }
  t.equal(bad, 0, 'every packet agrees with the naive matcher');
});

t.test('the split point: the k-th smallest endpoint is what a sort puts at k, duplicates and all', async (t) => {
  const r = rng(77);
  let bad = 0, first = '';
  for (let trial = 0; trial < 400; trial++) {
    const n = randInt(r, 1, 300);
    // Few distinct values in most trials: rules sharing a port range give many equal endpoints.
    const range = pick(r, [1, 2, 5, 1000, 2 ** 33]);
    const values = Float64Array.from({ length: n }, () => Math.floor(r() * range) - 2 ** 31 - 1);
    const sorted = Float64Array.from(values).sort();
    for (const k of [0, n >> 1, n - 1, randInt(r, 0, n - 1)]) {
      const got = kthSmallest(Float64Array.from(values), n, k);
      if (got !== sorted[k]) { bad++; first ||= `n ${n} k ${k}: ${got} vs ${sorted[k]}`; }
    }
  }
  t.equal(bad, 0, `the same value in 1,600 selections ${first}`);
});
