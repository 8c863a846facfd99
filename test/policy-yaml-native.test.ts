// The addon's YAML reader (native-bindings/src/yaml.c: libyaml to JSON text)
// against js-yaml with the core schema, which it stands in for on the policy
// loader's quick way, and the located parser (yaml), whose answer counts:
// for every document it converts, JSON.parse of its text equals both; what
// js-yaml refuses it refuses; and each thing it leaves to js-yaml (anchors,
// tags, repeated keys, numbers JSON writes otherwise...) comes back null.
// Thousands of generated documents, raw plain scalars among them, and the
// 10,000-rule policy of the scale benchmark.
import t from 'tap';
import { isDeepStrictEqual } from 'node:util';
import { load as jsYamlLoad, CORE_SCHEMA } from 'js-yaml';
import { parse as yamlParse, stringify } from 'yaml';
import { native } from '../src/io/native.js';
import { prng } from '../tools/prng.js';
import { scalePolicy } from '../bench/scalePolicies.js';
import { policyParse } from '../src/policy/load.js';

const toJson = (text: string): string | null => native().yamlToJson(text);

/** js-yaml's reading, or 'refused'. */
function jsYaml(text: string): unknown {
  try { return jsYamlLoad(text, { schema: CORE_SCHEMA }); } catch { return 'refused'; }
}

/** The located parser's reading (errors and warnings as 'refused'), repeated keys refused as the loader refuses them. */
function located(text: string): unknown {
  try { return yamlParse(text, { prettyErrors: false, uniqueKeys: true, strict: true }); } catch { return 'refused'; }
}

// Scalars as they might be written unquoted in a policy, tricky ones first: numbers in every form the core
// schema reads, words YAML 1.1 reads as booleans, MAC and IPv6 addresses (sexagesimal numbers to YAML 1.1).
const PLAIN = [
  '02:00:00:00:01:11', 'fd00::1', '10.0.1.11', '10.0.0.0/8', 'tcp/80', 'udp/53-60', 'icmp/echo-request', '1:2', '190:20:30',
  'yes', 'no', 'on', 'off', 'y', 'n', 'true', 'True', 'TRUE', 'false', 'FALSE', 'tRue', 'null', 'Null', 'NULL', '~', 'nULL',
  '0', '1', '-1', '42', '-0', '007', '010', '0x1F', '0X1F', '0o17', '0b101', '0b102', '1_000', '1_', '_1', '+5', '+0', '123456789012345', '1234567890123456', '99999999999999999999',
  '1.5', '-1.5', '1.', '.5', '-.5', '1.50', '0.0', '1e3', '1E-3', '1.5e+3', '.inf', '-.inf', '+.Inf', '.nan', '.NaN', '1_0.5', '1.2.3', '1e', 'e3',
  'web', 'a b', 'a-b', 'a_b', 'a.b', 'x:y', 'ü€', '日本', 'it\'s', 'a"b', 'a#b', 'a # c', '-x', '=', '<', '>', '|x', '@x', '`x', '%x', '?x', '!x', '&x', '*x', '[x', 'x]', '{x', 'x}', 'a,b', 'https://x.example/p?q=1',
];

/** A scalar written unquoted, single- or double-quoted (the last with escapes), as text to paste into a document. */
function scalarText(r: () => number, inFlow: boolean): string {
  const v = PLAIN[Math.floor(r() * PLAIN.length)];
  const how = r();
  if (how < 0.6) return inFlow && /[,[\]{}]/.test(v) ? `'${v.replace(/'/g, "''")}'` : v;
  if (how < 0.8) return `'${v.replace(/'/g, "''")}'`;
  const extra = ['', '\\n', '\\t', '\\u00e9', '\\x41', '\\\\', '\\"', '\\0', '\\U0001F600'][Math.floor(r() * 9)];
  return `"${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}${extra}"`;
}

/** A random document as raw text: block mappings and sequences, flow ones, keys that repeat or not. */
function documentText(r: () => number, depth = 0, indent = ''): string {
  const lines: string[] = [];
  const n = 1 + Math.floor(r() * 4);
  const seq = r() < 0.3;
  for (let i = 0; i < n; i++) {
    const key = r() < 0.15 ? scalarText(r, false) : `k${Math.floor(r() * (r() < 0.1 ? 3 : 50))}`;
    const head = seq ? `${indent}- ` : `${indent}${key}:`;
    const kind = depth < 3 ? r() : 1;
    if (kind < 0.25) {
      lines.push(seq ? `${indent}-` : head);
      lines.push(documentText(r, depth + 1, indent + '  '));
    } else if (kind < 0.45) {
      const items = Array.from({ length: Math.floor(r() * 4) }, () => scalarText(r, true));
      lines.push(`${seq ? head : head + ' '}[${items.join(', ')}]`);
    } else if (kind < 0.55) {
      const items = Array.from({ length: Math.floor(r() * 3) }, (_, j) => `f${j}: ${scalarText(r, true)}`);
      lines.push(`${seq ? head : head + ' '}{ ${items.join(', ')} }`);
    } else if (kind < 0.6) {
      lines.push(seq ? `${indent}-` : head); // an empty value
    } else {
      lines.push(`${seq ? head : head + ' '}${scalarText(r, false)}`);
    }
  }
  return lines.join('\n');
}

t.test('generated documents: converted exactly as js-yaml and the located parser read them, or left to them', async (t) => {
  const r = prng(20261202);
  let converted = 0, declined = 0, refusedByBoth = 0;
  const wrong: string[] = [];
  for (let k = 0; k < 6000; k++) {
    const text = documentText(r) + '\n';
    const json = toJson(text);
    const byJsYaml = jsYaml(text);
    if (json === null) {
      declined++;
      if (byJsYaml === 'refused') refusedByBoth++;
      continue;
    }
    converted++;
    const mine = JSON.parse(json);
    if (!isDeepStrictEqual(mine, byJsYaml) || !isDeepStrictEqual(mine, located(text))) {
      if (wrong.length < 5) wrong.push(`${JSON.stringify(text)}\n  native ${json}\n  js-yaml ${JSON.stringify(byJsYaml)}\n  located ${JSON.stringify(located(text))}`);
    }
  }
  t.same(wrong, [], 'every converted document reads as js-yaml and the located parser read it');
  t.ok(converted > 1500, `${converted} of 6000 converted`);
  t.ok(declined > 500 && refusedByBoth > 100, `${declined} left to js-yaml (${refusedByBoth} of them refused by js-yaml too)`);
});

t.test('the same values written by a YAML library in every style are converted, and read the same', async (t) => {
  const r = prng(7);
  const value = (depth: number): unknown => {
    const x = r();
    if (depth < 3 && x < 0.2) return Object.fromEntries(Array.from({ length: 1 + Math.floor(r() * 4) }, (_, i) => [`${PLAIN[Math.floor(r() * PLAIN.length)]}${i}`, value(depth + 1)]));
    if (depth < 3 && x < 0.35) return Array.from({ length: Math.floor(r() * 4) }, () => value(depth + 1));
    if (x < 0.45) return Math.floor(r() * 2e6) - 1e6;
    if (x < 0.5) return r() < 0.5;
    if (x < 0.55) return null;
    return PLAIN[Math.floor(r() * PLAIN.length)] + (r() < 0.2 ? '\n second line' : '');
  };
  let converted = 0;
  const wrong: string[] = [];
  for (let k = 0; k < 1500; k++) {
    const v = { root: value(0) };
    const text = stringify(v, { collectionStyle: k % 3 === 0 ? 'flow' : 'any', defaultStringType: (['PLAIN', 'QUOTE_DOUBLE', 'QUOTE_SINGLE', 'BLOCK_LITERAL'] as const)[k % 4] });
    const json = toJson(text);
    if (json === null) continue;
    converted++;
    if (!isDeepStrictEqual(JSON.parse(json), v) || !isDeepStrictEqual(JSON.parse(json), jsYaml(text))) if (wrong.length < 5) wrong.push(`${JSON.stringify(text)} -> ${json}`);
  }
  t.same(wrong, [], 'read back as written');
  t.ok(converted > 1200, `${converted} of 1500 converted`);
});

t.test('random text: never a crash, and what it converts reads as js-yaml reads it', async (t) => {
  const r = prng(99);
  const pieces = ['a', 'b', '1', '0', '-', ':', ' ', '  ', '\n', '\t', '[', ']', '{', '}', ',', '?', '#', '&', '*', '!', '|', '>', "'", '"', '\\', '%', '@', '`', '.', 'é', '😀', '\u0085', '\u0000', '\r', '~', 'x: ', '- ', '---', '...', '"\\u00', '\\x4', 'true', '0x', '.inf', '\ufeff'];
  let converted = 0;
  const wrong: string[] = [];
  for (let k = 0; k < 30000; k++) {
    let text = '';
    for (let n = Math.floor(r() * 40); n > 0; n--) text += pieces[Math.floor(r() * pieces.length)];
    const json = toJson(text);
    if (json === null) continue;
    converted++;
    let mine: unknown = 'not JSON';
    try { mine = JSON.parse(json); } catch { /* counted below */ }
    if (!isDeepStrictEqual(mine, jsYaml(text)) && wrong.length < 5) wrong.push(`${JSON.stringify(text)} -> ${json} (js-yaml ${JSON.stringify(jsYaml(text))})`);
  }
  t.same(wrong, [], 'every converted text is JSON and reads as js-yaml reads it');
  t.ok(converted > 1000, `${converted} of 30000 converted`);
});

t.test('what it leaves to js-yaml comes back null', async (t) => {
  const declined: Array<[string, string]> = [
    ['an anchor and an alias', 'a: &x 1\nb: *x\n'],
    ['a tag', 'a: !!str 1\n'],
    ['a non-specific tag', 'a: ! 1\n'],
    ['a directive', '%YAML 1.2\n---\na: 1\n'],
    ['two documents', 'a: 1\n---\nb: 2\n'],
    ['no document', '# only a comment\n'],
    ['a repeated key', 'a: 1\nb: 2\na: 3\n'],
    ['a repeated key, quoted the other way', 'a: 1\n"a": 2\n'],
    ['a repeated key in a nested mapping', 'x:\n  a: 1\n  a: 2\n'],
    ['a mapping as a key', '? {a: 1}\n: x\n'],
    ['a sequence as a key', '? [a]\n: x\n'],
    ['a null key', '~: x\n'],
    ['a key that String() writes otherwise', '0x10: x\n'],
    ['a float key', '1.0: x\n'],
    ['a boolean key', 'true: x\n'],
    ['a hexadecimal number', 'a: 0x1F\n'],
    ['an octal number', 'a: 0o17\n'],
    ['a plus sign', 'a: +5\n'],
    ['a leading zero', 'a: 010\n'],
    ['an exponent', 'a: 1e3\n'],
    ['a fraction without its integer part', 'a: .5\n'],
    ['a number ending in a point', 'a: 1.\n'],
    ['a question mark and a flow collection', 'a: [x]\nb: c?\n'],
    ['a single-pair mapping in a flow sequence', 'a: [b: c]\n'],
    ['infinity', 'a: .inf\n'],
    ['not a number', 'a: .nan\n'],
    ['16 digits', 'a: 1234567890123456\n'],
    ['a syntax error', 'a: [1, 2\nb: 3\n'],
    ['a tab for indentation', 'a:\n\tb: 1\n'],
    ['a NEL', 'a: x\u0085y\n'],
    ['a line separator', 'a: x\u2028y\n'],
    ['a paragraph separator', 'a: x\u2029y\n'],
    ['nesting deeper than 256', 'a: ' + '['.repeat(300) + ']'.repeat(300) + '\n'],
    ['a literal block scalar', 'l: |\n  one\n  two\n'],
    ['a folded block scalar', 'f: >\n  one\n  two\n'],
    ['a carriage return alone', 'a: 1\rb: 2\n'],
    ['a byte order mark past the start', 'a: 1\n\ufeffb: 2\n'],
    ['a comment right after a quote', 'a: "x"#c\n'],
    ['a comment right after a bracket', 'a: [x]#c\n'],
    ['an indented document marker', 'a:\n  ---\n'],
    ['a plain scalar over two lines', 'a: one\n  two\n'],
  ];
  for (const [label, text] of declined) t.equal(toJson(text), null, label);
});

t.test('what it converts, typed as the core schema types it', async (t) => {
  const cases: Array<[string, unknown]> = [
    ['mac: 02:00:00:00:01:11\nip: 10.0.1.11\nv6: fd00::1\n', { mac: '02:00:00:00:01:11', ip: '10.0.1.11', v6: 'fd00::1' }],
    ['a: yes\nb: on\nc: n\n', { a: 'yes', b: 'on', c: 'n' }],
    ['a: true\nb: False\nc: NULL\nd: ~\ne:\nf: ""\n', { a: true, b: false, c: null, d: null, e: null, f: '' }],
    ['a: 0\nb: -1\nc: 42\nd: -0\ne: 1.5\nf: "1"\ng: \'2\'\n', { a: 0, b: -1, c: 42, d: -0, e: 1.5, f: '1', g: '2' }],
    ['80: http\n-1: x\n', { 80: 'http', '-1': 'x' }],
    ['a: 0b101\nb: 1_000\nc: 1.2.3\n', { a: '0b101', b: '1_000', c: '1.2.3' }], // not numbers in YAML 1.2's core schema
    ['s: "tab\\there \\"q\\" \\u00e9 \\\\"\n', { s: 'tab\there "q" é \\' }],
    ['s: "\\x01\\x1f"\n', { s: '\x01\x1f' }],
    ['- [a, {b: c}]\n- {}\n- []\n', [['a', { b: 'c' }], {}, []]],
    ['x:\n  a: 1\ny:\n  a: 2\n', { x: { a: 1 }, y: { a: 2 } }],
    ['\ufeffa: 1\n', { a: 1 }],
    ['a: 1\r\nb: [x, y]\r\n', { a: 1, b: ['x', 'y'] }],
    ['---\na: 1\n...\n', { a: 1 }],
    ['42\n', 42],
  ];
  for (const [text, want] of cases) {
    const json = toJson(text);
    t.not(json, null, `${JSON.stringify(text)} is converted`);
    t.same(json === null ? null : JSON.parse(json), want, JSON.stringify(text));
    t.ok(isDeepStrictEqual(json === null ? null : JSON.parse(json), jsYaml(text)), `${JSON.stringify(text)}: as js-yaml reads it`);
  }
  t.throws(() => native().yamlToJson(5 as unknown as string), /expected a string/, 'a string or a type error');
});

t.test('the 10,000-rule policy: converted, read as js-yaml reads it, and loaded into the same model', async (t) => {
  const text = stringify(scalePolicy('rules10k'));
  const json = toJson(text);
  t.not(json, null, 'converted');
  t.ok(isDeepStrictEqual(JSON.parse(json!), jsYaml(text)), 'as js-yaml reads it');
  const quick = policyParse(text, 'rules10k.yaml', { shadows: false });
  const slow = policyParse(text, 'rules10k.yaml', { located: true, shadows: false });
  t.same(quick.problems, [], 'no problems');
  t.equal(quick.policy?.sections.reduce((n, s) => n + s.rules.length, 0), slow.policy?.sections.reduce((n, s) => n + s.rules.length, 0), 'the same rules');
  t.equal(JSON.stringify([...quick.policy!.workloads.values()]), JSON.stringify([...slow.policy!.workloads.values()]), 'the same workloads');
});
