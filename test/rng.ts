/** Helpers for randomised tests, over the seeded PRNG the benchmarks use too. */
import { prng } from '../tools/prng.js';

export const rng = prng;

export function randInt(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

export function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)];
}
