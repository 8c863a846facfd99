/**
 * The compiled rule trie: first-match packet classification over typed arrays.
 *
 * What
 *   A rule is a box: one closed interval [lo, hi] of unsigned 32-bit values per
 *   dimension. IPv4 uses 5 dimensions (src, dst, proto, sport, dport); IPv6
 *   spends four 32-bit dimensions on each address (a prefix is still a box:
 *   whole words exact, one word a range, the rest wildcards), so 11. A rule's
 *   index is its priority: lookup returns the smallest index whose box holds
 *   the key, exactly what a linear scan of the list in order returns, or -1.
 *
 * Design (HyperSplit decision tree, partitioned as CutSplit does)
 *   - Rules are first partitioned by how specific their address fields are:
 *     [0] source address small, [1] else destination small, [2] both wide.
 *     Splitting a tree on a field in which most rules are wildcards replicates
 *     those rules into every child; keeping the wide rules apart is what bounds
 *     the memory of wildcard-heavy sets (firewall-style rule sets).
 *   - Each partition is a binary tree. An inner node compares one key word
 *     with a split value: key <= split goes left. Split points are chosen at
 *     the weighted median of the rule endpoints in the dimension that makes
 *     the most progress for the least replication.
 *   - A leaf holds up to `leafSize` rule indices in ascending order (more only
 *     where no split makes progress). While building, a rule that covers the
 *     whole box of a node hides every later rule there, so those are dropped:
 *     this is what keeps default-ish wildcard rules from filling every leaf.
 *   - Lookup walks each partition whose smallest rule index beats the best
 *     match so far (partitions are ordered by that index) and scans the leaf.
 *
 * Memory layout (all Int32Array; values biased by XOR 0x80000000 so a signed
 *   compare orders them as unsigned: keys passed to lookup are biased too)
 *   ruleLo/ruleHi  count * dims, the boxes.
 *   nodes          stride 4: [dim, split, leftRef, rightRef]. A ref >= 0 is a
 *                  node's offset in `nodes`; a ref < 0 is ~offset in `leaves`.
 *   leaves         [n, r0, r1, ... r(n-1)] per leaf, ascending rule indices.
 *   roots/rootMin  per partition: its root ref and its smallest rule index,
 *                  sorted by rootMin; an empty partition is absent.
 *
 * Bounds on memory
 *   Besides the partitioning and covered-rule pruning above, a split is taken
 *   only if each child holds fewer rules than its parent, depth is capped at
 *   MAX_DEPTH, and each partition has a budget of words (leaf entries and
 *   node words, `budgetPerRule` times its rule count): a build that outgrows
 *   it stops at once and starts again with twice the leaf size, trading
 *   lookup time for memory, down to one leaf holding the whole partition (a
 *   linear scan). Memory is therefore O(rules) whatever the rule set.
 *
 * Who may call what
 *   trieBuild runs in the control path (it allocates, its words in typed
 *   arrays from the start: util/words.ts). trieLookup is the
 *   hot path: no allocation, no exceptions. A RuleTrie is immutable once
 *   built; a policy change builds a new one and swaps the reference.
 */
import { Words } from '../util/words.js';

export const BIAS = 0x80000000 | 0;
const MAX_DEPTH = 48;
const NODE_STRIDE = 4;

export interface TrieOptions {
  /** Rules a leaf may hold before it is split. */
  leafSize?: number;
  /** Leaf entries a partition may hold, per rule in it, before it is rebuilt coarser. */
  budgetPerRule?: number;
  /**
   * Which dimensions hold the source and destination address words, for the
   * partitioning; defaults to the IPv4 layout (dimension 0 and 1).
   */
  srcDims?: number[];
  dstDims?: number[];
}

export interface RuleTrie {
  readonly dims: number;
  readonly count: number;
  readonly ruleLo: Int32Array;
  readonly ruleHi: Int32Array;
  readonly nodes: Int32Array;
  readonly leaves: Int32Array;
  readonly roots: Int32Array;
  readonly rootMin: Int32Array;
  readonly stats: TrieStats;
}

export interface TrieStats {
  partitions: number[];
  /** The leaf size each non-empty partition was built with (larger than asked where the budget forced it). */
  leafSizes: number[];
  nodes: number;
  leaves: number;
  leafEntries: number;
  maxDepth: number;
  maxLeaf: number;
  bytes: number;
  buildMs: number;
}

/** Bias an unsigned 32-bit value for signed comparison. */
export function bias(u: number): number {
  return (u ^ BIAS) | 0;
}

/** Undo bias(): back to an unsigned 32-bit value. */
export function unbias(b: number): number {
  return (b ^ BIAS) >>> 0;
}

/** Thrown inside a build that outgrows its budget; trieBuild catches it and retries coarser. */
class OverBudget {}

/**
 * The k-th smallest of a[0 .. n) (0-based), moving elements of a about
 * (quickselect: linear on average, where sorting the whole of it was the
 * build's largest cost at 100,000 rules). The same value a sort would put at
 * a[k]. Three-way partitions, so that many equal endpoints (rules sharing a
 * port range) cost one pass, not one pass each.
 */
export function kthSmallest(a: Float64Array, n: number, k: number): number {
  let left = 0, right = n - 1;
  while (right > left) {
    // Median of three as the pivot value.
    const x = a[left], y = a[(left + right) >>> 1], z = a[right];
    const pivot = x < y ? (y < z ? y : x < z ? z : x) : (x < z ? x : y < z ? z : y);
    // a[left .. lt) < pivot, a[lt .. i) == pivot, a(gt .. right] > pivot.
    let lt = left, i = left, gt = right;
    while (i <= gt) {
      const v = a[i];
      if (v < pivot) swap(a, lt++, i++);
      else if (v > pivot) swap(a, i, gt--);
      else i++;
    }
    if (k < lt) right = lt - 1;
    else if (k > gt) left = gt + 1;
    else return pivot;
  }
  return a[k];
}

function swap(a: Float64Array, i: number, j: number): void {
  const t = a[i];
  a[i] = a[j];
  a[j] = t;
}

class Builder {
  readonly nodes = new Words();
  readonly leaves = new Words();
  maxDepth = 0;
  maxLeaf = 0;
  leafCount = 0;
  /** Candidate split points of the node being split (its rules' endpoints in one dimension); reused by every node. */
  private points = new Float64Array(0);
  /** prune()'s survivors while it counts them; reused by every call. */
  private kept = new Int32Array(0);
  constructor(
    readonly dims: number,
    readonly lo: Int32Array,
    readonly hi: Int32Array,
    readonly leafSize: number,
    /** Leaf entries plus node words this build may write before it gives up. */
    readonly budget: number,
  ) {}

  /**
   * Drop rules that do not meet the box, and every rule after the first one
   * that covers it whole (that one always wins inside the box).
   */
  prune(rules: Int32Array, boxLo: Int32Array, boxHi: Int32Array): Int32Array {
    const { dims, lo, hi } = this;
    if (this.kept.length < rules.length) this.kept = new Int32Array(rules.length);
    const kept = this.kept;
    let k = 0;
    for (let i = 0; i < rules.length; i++) {
      const r = rules[i];
      const o = r * dims;
      let meets = true;
      let covers = true;
      for (let d = 0; d < dims; d++) {
        const rl = lo[o + d], rh = hi[o + d];
        if (rl > boxHi[d] || rh < boxLo[d]) { meets = false; break; }
        if (rl > boxLo[d] || rh < boxHi[d]) covers = false;
      }
      if (!meets) continue;
      kept[k++] = r;
      if (covers) break;
    }
    return kept.slice(0, k);
  }

  leaf(rules: Int32Array, depth: number): number {
    if (this.leaves.length + this.nodes.length > this.budget) throw new OverBudget();
    const off = this.leaves.reserve(rules.length + 1);
    const words = this.leaves.a;
    words[off] = rules.length;
    words.set(rules, off + 1);
    this.leafCount++;
    if (rules.length > this.maxLeaf) this.maxLeaf = rules.length;
    if (depth > this.maxDepth) this.maxDepth = depth;
    return ~off;
  }

  coversBox(r: number, boxLo: Int32Array, boxHi: Int32Array): boolean {
    const o = r * this.dims;
    for (let d = 0; d < this.dims; d++) {
      if (this.lo[o + d] > boxLo[d] || this.hi[o + d] < boxHi[d]) return false;
    }
    return true;
  }

  /** Build the subtree for `rules` (already pruned to the box); returns its ref. */
  build(rules: Int32Array, boxLo: Int32Array, boxHi: Int32Array, depth: number): number {
    const n = rules.length;
    if (n <= this.leafSize || depth >= MAX_DEPTH || this.coversBox(rules[0], boxLo, boxHi)) {
      return this.leaf(rules, depth);
    }
    const { dims, lo, hi } = this;
    let bestDim = -1;
    let bestSplit = 0;
    let bestCost = Infinity;
    if (this.points.length < 2 * n) this.points = new Float64Array(2 * n);
    const points = this.points;
    for (let d = 0; d < dims; d++) {
      const bl = boxLo[d], bh = boxHi[d];
      if (bl === bh) continue;
      // Candidate splits (key <= s goes left): just below each start, at each end.
      let np = 0;
      for (let i = 0; i < n; i++) {
        const o = rules[i] * dims + d;
        const rl = lo[o], rh = hi[o];
        if (rl > bl) points[np++] = rl - 1;
        if (rh < bh) points[np++] = rh;
      }
      if (np === 0) continue;
      // Weighted median of the distinct endpoints: each endpoint weighs as
      // many rules as end or start there, so dense regions get split first.
      let split = kthSmallest(points, np, np >> 1);
      if (split >= bh) split = bh - 1;
      let nl = 0, nr = 0;
      for (let i = 0; i < n; i++) {
        const o = rules[i] * dims + d;
        if (lo[o] <= split) nl++;
        if (hi[o] > split) nr++;
      }
      if (nl >= n || nr >= n) continue;
      // Prefer the split whose larger child is smallest; replication breaks ties.
      const cost = Math.max(nl, nr) * 4 + (nl + nr - n);
      if (cost < bestCost) { bestCost = cost; bestDim = d; bestSplit = split; }
    }
    if (bestDim < 0) return this.leaf(rules, depth);

    const nodeOff = this.nodes.reserve(NODE_STRIDE);
    this.nodes.a[nodeOff] = bestDim;
    this.nodes.a[nodeOff + 1] = bestSplit;
    const savedHi = boxHi[bestDim];
    boxHi[bestDim] = bestSplit;
    const left = this.prune(rules, boxLo, boxHi);
    const leftRef = left.length === 0 ? this.leaf(left, depth + 1) : this.build(left, boxLo, boxHi, depth + 1);
    boxHi[bestDim] = savedHi;
    const savedLo = boxLo[bestDim];
    boxLo[bestDim] = bestSplit + 1;
    const right = this.prune(rules, boxLo, boxHi);
    const rightRef = right.length === 0 ? this.leaf(right, depth + 1) : this.build(right, boxLo, boxHi, depth + 1);
    boxLo[bestDim] = savedLo;
    // (The words may have moved while the children were built: read the array now.)
    this.nodes.a[nodeOff + 2] = leftRef;
    this.nodes.a[nodeOff + 3] = rightRef;
    return nodeOff;
  }
}

/**
 * Build a trie from `count` boxes given as unsigned bounds (`lo[r*dims+d]`,
 * `hi[r*dims+d]`, lo <= hi). Rule r has priority r (smaller wins).
 */
export function trieBuild(
  dims: number,
  count: number,
  loU: ArrayLike<number>,
  hiU: ArrayLike<number>,
  options: TrieOptions = {},
): RuleTrie {
  const started = performance.now();
  const leafSize = Math.max(1, options.leafSize ?? 4);
  const budgetPerRule = options.budgetPerRule ?? 64;
  const srcDims = options.srcDims ?? [0];
  const dstDims = options.dstDims ?? [1];
  const ruleLo = new Int32Array(count * dims);
  const ruleHi = new Int32Array(count * dims);
  for (let i = 0; i < count * dims; i++) {
    const l = loU[i] >>> 0, h = hiU[i] >>> 0;
    if (l > h) throw new RangeError(`rule ${Math.floor(i / dims)} dimension ${i % dims}: lo ${l} > hi ${h}`);
    ruleLo[i] = bias(l);
    ruleHi[i] = bias(h);
  }

  // A field is "small" when its box spans at most 2^16 values in its most
  // significant word (an IPv4 /16, or an IPv6 prefix of /16 and longer in the
  // top word): such rules can be split on that field without replication.
  const SMALL_SPAN = 0x10000;
  const isSmall = (r: number, fieldDims: number[]): boolean => {
    const d = fieldDims[0];
    const span = (ruleHi[r * dims + d] - ruleLo[r * dims + d]);
    return span < SMALL_SPAN;
  };
  const parts: number[][] = [[], [], []];
  for (let r = 0; r < count; r++) {
    if (isSmall(r, srcDims)) parts[0].push(r);
    else if (isSmall(r, dstDims)) parts[1].push(r);
    else parts[2].push(r);
  }

  const built: Array<{ b: Builder; ref: number; min: number }> = [];
  let maxDepth = 0, maxLeaf = 0, leafCount = 0;
  const leafSizes: number[] = [];
  for (const part of parts) {
    if (part.length === 0) continue;
    const budget = budgetPerRule * part.length + 1024;
    let size = leafSize;
    for (;;) {
      // A leaf as large as the partition always fits: that is the linear scan.
      const b = new Builder(dims, ruleLo, ruleHi, size, size >= part.length ? Infinity : budget);
      const boxLo = new Int32Array(dims).fill(BIAS);
      const boxHi = new Int32Array(dims).fill(~BIAS);
      const pruned = b.prune(Int32Array.from(part), boxLo, boxHi);
      let ref: number;
      try {
        ref = b.build(pruned, boxLo, boxHi, 0);
      } catch (e) {
        if (!(e instanceof OverBudget)) throw e;
        size *= 2;
        continue;
      }
      built.push({ b, ref, min: part[0] });
      maxDepth = Math.max(maxDepth, b.maxDepth);
      maxLeaf = Math.max(maxLeaf, b.maxLeaf);
      leafCount += b.leafCount;
      leafSizes.push(size);
      break;
    }
  }
  // Each partition's words placed behind the ones before, its references moved with them.
  let nodeWords = 0, leafWords = 0;
  for (const { b } of built) { nodeWords += b.nodes.length; leafWords += b.leaves.length; }
  const nodes = new Int32Array(nodeWords), leaves = new Int32Array(leafWords);
  const roots: Array<{ ref: number; min: number }> = [];
  let nodeBase = 0, leafBase = 0;
  for (const { b, ref, min } of built) {
    const reloc = (x: number) => (x >= 0 ? x + nodeBase : ~(~x + leafBase));
    const from = b.nodes.a;
    for (let i = 0; i < b.nodes.length; i += NODE_STRIDE) {
      nodes[nodeBase + i] = from[i];
      nodes[nodeBase + i + 1] = from[i + 1];
      nodes[nodeBase + i + 2] = reloc(from[i + 2]);
      nodes[nodeBase + i + 3] = reloc(from[i + 3]);
    }
    leaves.set(b.leaves.view(), leafBase);
    roots.push({ ref: reloc(ref), min });
    nodeBase += b.nodes.length;
    leafBase += b.leaves.length;
  }
  roots.sort((a, b) => a.min - b.min);
  const t: RuleTrie = {
    dims,
    count,
    ruleLo,
    ruleHi,
    nodes,
    leaves,
    roots: Int32Array.from(roots.map((r) => r.ref)),
    rootMin: Int32Array.from(roots.map((r) => r.min)),
    stats: {
      partitions: parts.map((p) => p.length),
      leafSizes,
      nodes: nodes.length / NODE_STRIDE,
      leaves: leafCount,
      leafEntries: leaves.length - leafCount,
      maxDepth,
      maxLeaf,
      bytes: 0,
      buildMs: 0,
    },
  };
  t.stats.bytes = (ruleLo.length + ruleHi.length + t.nodes.length + t.leaves.length + t.roots.length * 2) * 4;
  t.stats.buildMs = performance.now() - started;
  return t;
}

/**
 * First-match lookup. `key` holds `dims` biased words from `keyOff`.
 * Returns the smallest matching rule index, or -1. Allocation-free.
 */
export function trieLookup(t: RuleTrie, key: Int32Array, keyOff: number): number {
  const nodes = t.nodes, leaves = t.leaves, roots = t.roots, rootMin = t.rootMin;
  const lo = t.ruleLo, hi = t.ruleHi, dims = t.dims;
  let best = 0x7fffffff;
  for (let p = 0; p < roots.length; p++) {
    if (rootMin[p] >= best) break;
    let ref = roots[p];
    while (ref >= 0) {
      ref = key[keyOff + nodes[ref]] <= nodes[ref + 1] ? nodes[ref + 2] : nodes[ref + 3];
    }
    const leaf = ~ref;
    const end = leaf + 1 + leaves[leaf];
    for (let i = leaf + 1; i < end; i++) {
      const r = leaves[i];
      if (r >= best) break;
      const o = r * dims;
      let d = 0;
      for (; d < dims; d++) {
        const k = key[keyOff + d];
        if (k < lo[o + d] || k > hi[o + d]) break;
      }
      if (d === dims) { best = r; break; }
    }
  }
  return best === 0x7fffffff ? -1 : best;
}

/**
 * The linear scan over the same boxes: the reference for tests and the
 * baseline for benchmarks (kept as tight as the trie's leaf scan, so the
 * comparison is fair).
 */
export function linearLookup(t: RuleTrie, key: Int32Array, keyOff: number): number {
  const lo = t.ruleLo, hi = t.ruleHi, dims = t.dims, count = t.count;
  for (let r = 0; r < count; r++) {
    const o = r * dims;
    let d = 0;
    for (; d < dims; d++) {
      const k = key[keyOff + d];
      if (k < lo[o + d] || k > hi[o + d]) break;
    }
    if (d === dims) return r;
  }
  return -1;
}
