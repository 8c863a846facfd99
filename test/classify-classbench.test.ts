// Every trace packet of every shipped ClassBench set gets the same rule from
// the trie as from a linear scan, and never a rule after the one it was drawn from.
import t from 'tap';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { readClassbenchRules, readClassbenchTrace, CLASSBENCH_DIMS } from '../tools/classbench.js';
import { linearLookup, trieBuild, trieLookup } from '../src/classify/ruleTrie.js';

const root = fileURLToPath(new URL('../data/classbench/', import.meta.url));
const sets: string[] = [];
for (const size of readdirSync(root).filter((d) => /^\d+k$/.test(d))) {
  for (const f of readdirSync(root + size).filter((f) => f.endsWith('.rules'))) sets.push(`${size}/${f.replace(/\.rules$/, '')}`);
}

t.ok(sets.length >= 18, `all 18 shipped sets are found (found ${sets.length})`);

for (const set of sets) {
  t.test(set, async (t) => {
    const rules = readClassbenchRules(`${root}${set}.rules`);
    const trace = readClassbenchTrace(`${root}${set}.trace`);
    const trie = trieBuild(CLASSBENCH_DIMS, rules.count, rules.lo, rules.hi);
    let differ = 0, afterDrawn = 0, unmatched = 0;
    const examples: string[] = [];
    for (let i = 0; i < trace.count; i++) {
      const got = trieLookup(trie, trace.keys, i * CLASSBENCH_DIMS);
      const want = linearLookup(trie, trace.keys, i * CLASSBENCH_DIMS);
      if (got !== want) {
        differ++;
        if (examples.length < 5) examples.push(`packet ${i}: trie ${got}, linear ${want}`);
      }
      // In these traces the id is the 0-based index of the rule the header came from.
      const drawn = trace.drawnFrom[i];
      if (got < 0) unmatched++;
      else if (drawn >= 0 && got > drawn) afterDrawn++;
    }
    t.equal(differ, 0, `trie equals linear scan on ${trace.count} packets ${examples.join('; ')}`);
    t.equal(afterDrawn, 0, 'no packet matches later than the rule it was drawn from');
    t.equal(unmatched, 0, 'every drawn packet matches some rule');
  });
}
