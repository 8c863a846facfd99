// Policy fuzzing (bench/fuzz-policy.ts): hostile documents of every class
// (alias bombs, unresolved aliases, deep nesting, a 20,000-group chain, a
// 5,000-group cycle, prototype names, huge lists, duplicate keys) and
// mutated example policies in YAML and JSON. Nothing may throw or hang,
// and every refusal must name a file, a line and a column. Fixed seeds;
// `tapwall bench fuzz-policy --seed S --docs N` replays and runs longer.
import t from 'tap';
import { fuzzPolicies, formatPolicyFuzz, hostileDocuments, loadChecked } from '../bench/fuzz-policy.js';

t.test('hostile documents: each refused with a located error, none throws', async (t) => {
  for (const [name, text] of hostileDocuments()) {
    const r = loadChecked(name.replace(/\W+/g, '-'), text);
    t.equal(r.problem, null, `${name}: a located error, no exception`);
    t.notOk(r.valid, `${name}: refused`);
  }
});

for (const seed of [1, 2]) {
  t.test(`seed ${seed}: mutated policies`, async (t) => {
    const r = fuzzPolicies({ documents: 600, seed });
    t.comment(formatPolicyFuzz(r));
    t.same(r.problems, [], `seed ${seed}: nothing threw, every refusal was located (replay: tapwall bench fuzz-policy --seed ${seed} --docs 600)`);
    t.ok(r.valid > 0 && r.refused > 0, `seed ${seed}: both valid (${r.valid}) and refused (${r.refused}) documents were produced`);
  });
}
