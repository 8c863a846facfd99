// The quick parse (JSON.parse, js-yaml) against the located one (yaml with
// line counting): the same policy for valid documents, written as YAML and as
// JSON; and every document the quick path must not decide goes the located way.
import t from 'tap';
import { readFileSync, readdirSync } from 'node:fs';
import { stringify } from 'yaml';
import { policyParse } from '../src/policy/load.js';

/**
 * A policy model as comparable text (Maps as entry lists). The rules' lines
 * and columns (`places`) are left out: they are read only to place a problem,
 * and a document with any problem takes the located path.
 */
function modelText(p: unknown): string {
  return JSON.stringify(p, (k, v) => (k === 'places' ? undefined : v instanceof Map ? [...v.entries()] : v));
}

const examples = readdirSync('examples').filter((f) => /\.(ya?ml|json)$/.test(f));

t.test('valid documents: the quick and the located parse give the same policy', async (t) => {
  let compared = 0;
  for (const f of examples) {
    const text = readFileSync(`examples/${f}`, 'utf8');
    const located = policyParse(text, f, { located: true, shadows: false });
    if (!located.policy) continue; // the broken example: see below
    const asJson = JSON.stringify((await import('yaml')).parse(text));
    for (const [label, doc] of [['as written', text], ['as JSON', asJson], ['as YAML', stringify(JSON.parse(asJson))]] as const) {
      const quick = policyParse(doc, f, { shadows: false });
      const slow = policyParse(doc, f, { located: true, shadows: false });
      t.same(quick.problems, slow.problems, `${f} ${label}: same problems`);
      t.equal(modelText(quick.policy), modelText(slow.policy), `${f} ${label}: same model`);
      compared++;
    }
  }
  t.ok(compared >= 6, `${compared} documents compared`);
});

t.test('what the quick path must not decide gets the located answer', async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    ['repeated JSON key', '{"default": "drop", "default": "allow", "sections": []}', /repeated/],
    ['repeated JSON key, escaped', '{"sections": [], "default": "drop", "d\\u0065fault": "allow"}', /repeated/],
    ['repeated YAML key', 'default: drop\ndefault: allow\nsections: []\n', /repeated/],
    ['syntax', 'default: [drop\nsections: []\n', /./],
    ['unknown key', 'default: drop\nsectionz: []\n', /./],
    ['alias', 'a: &x drop\ndefault: *x\nsections: []\n', /./],
  ];
  for (const [label, text, message] of cases) {
    const r = policyParse(text, 'p.yaml');
    t.equal(r.policy, null, `${label}: refused`);
    t.ok(r.problems.length > 0 && r.problems.every((p) => p.line > 0), `${label}: every problem has a line`);
    t.match(r.problems.map((p) => p.message).join('; '), message, label);
  }
  // A merge key is not YAML 1.2: the located parse reads it as a key named '<<' and refuses it.
  const merge = policyParse('base: &b { default: drop }\n<<: *b\nsections: []\n', 'm.yaml');
  t.equal(merge.policy, null, 'a merge key is refused, not merged');
});
