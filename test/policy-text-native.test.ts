// The addon's pass over a policy's text (native-bindings/src/text.c,
// policyTextScan) against the loader's own scans it stands in for:
// textProblem (indentation and bracket nesting, read around quotes and
// comments as YAML writes them) and jsonRepeatsKey (a key repeated in one
// JSON object, or nesting too deep). On thousands of generated texts, random
// runs of the characters those scans look at and generated JSON objects with
// repeated and escaped keys, each answer must be the JavaScript scans' own.
import t from 'tap';
import { native } from '../src/io/native.js';
import { prng } from '../tools/prng.js';
import { jsonRepeatsKey, MAX_NESTING, policyParse, textProblem } from '../src/policy/load.js';
import { scalePolicy } from '../bench/scalePolicies.js';

/** A text for a message, every character past ASCII escaped: a raw U+2028 or U+0085 in TAP output cuts its lines, and the runner then loses the failure. */
const shown = (text: string): string => JSON.stringify(text).replace(/[^\x20-\x7e]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);

const scan = (text: string, asJson: boolean, nesting = MAX_NESTING): number => native().policyTextScan(text, nesting, asJson);

/** What the addon must answer, by the JavaScript scans. */
function expected(text: string, asJson: boolean, nesting: number): number[] {
  if (textProblem(text, 'x', nesting) !== null) return [1];
  if (!asJson) return [0];
  // A key with an escape may leave the answer to the JavaScript scan (3), or be found repeated or deep before it (2).
  return jsonRepeatsKey(text, nesting) ? [2, 3] : [0, 3];
}

// Characters the scans look at, and some they must read past: spaces that are not ASCII before a quote or a '#'
// (U+00A0, U+3000, U+2028, U+FEFF), letters of two, three and four UTF-8 bytes.
const ALPHABET = ['[', ']', '{', '}', '"', "'", '\\', '#', ' ', '\n', '-', ',', ':', 'a', '\t', '\u00a0', '\u3000', '\u2028', '\ufeff', '\u2009', 'é', '€', '😀', '\u0085'];

/** Random runs of those characters, brackets and indentation around a limit of `nesting` levels. */
function randomText(r: () => number, nesting: number): string {
  let out = '';
  const n = Math.floor(r() * 120);
  for (let i = 0; i < n; i++) {
    const x = r();
    if (x < 0.03) out += (r() < 0.5 ? '[' : '{').repeat(Math.floor(r() * nesting));
    else if (x < 0.05) out += '\n' + ' -'.repeat(Math.floor(r() * (nesting * 2 + 2)));
    else out += ALPHABET[Math.floor(r() * ALPHABET.length)];
  }
  return out;
}

const KEYS = ['a', 'b', 'k1', 'name', 'é', '日本', '😀', 'a b', 'x"y', 'q\\', ''];

/** A JSON key as written: plain, or (now and then) with an escape that decodes to the same or another key. */
function keyText(r: () => number, key: string): string {
  const plain = JSON.stringify(key);
  if (r() < 0.03 && key.length > 0) return `"\\u${key.charCodeAt(0).toString(16).padStart(4, '0')}${JSON.stringify(key.slice(1)).slice(1)}`;
  return plain;
}

/** A JSON-like text: objects whose keys repeat now and then, at any depth; strings with quotes, backslashes, brackets. */
function randomJson(r: () => number, depth = 0): string {
  const x = r();
  if (depth > 4 || x < 0.3) {
    const s = ['"[{"', '"a\\\\"', '"\\"}"', '"#x"', '1', 'true', 'null', '"é€😀"', '" - "'][Math.floor(r() * 9)];
    return s;
  }
  if (x < 0.45) return `[${Array.from({ length: Math.floor(r() * 4) }, () => randomJson(r, depth + 1)).join(',')}]`;
  const n = Math.floor(r() * (r() < 0.1 ? 40 : 5));
  const used = new Set<string>();
  const entries: string[] = [];
  for (let i = 0; i < n; i++) {
    let key = KEYS[Math.floor(r() * KEYS.length)];
    if (used.has(key) && r() < 0.6) key = `${key}${i}`; // most objects keep their keys apart
    used.add(key);
    entries.push(`${keyText(r, key)}${r() < 0.5 ? ' : ' : ':'}${randomJson(r, depth + 1)}`);
  }
  return `{${entries.join(r() < 0.5 ? ',\n  ' : ',')}}`;
}

t.test('the text scan answers as textProblem does, on random runs of the characters it reads', (t) => {
  const r = prng(41);
  let problems = 0;
  // Small limits (2 to 5 levels, 8 to 20 columns) make every quote and comment the scans read count.
  for (let i = 0; i < 6000; i++) {
    const nesting = 2 + (i % 4);
    const text = randomText(r, nesting);
    const want = expected(text, false, nesting)[0];
    const got = scan(text, false, nesting);
    if (want === 1) problems++;
    if (got !== want) { t.fail(`text ${shown(text)} at ${nesting} levels: addon ${got}, textProblem says ${want}`); break; }
  }
  // Both answers must have come up often, or the comparison shows nothing.
  t.ok(problems > 600 && problems < 5400, `textProblem found something in ${problems} of 6000 texts`);
  t.end();
});

t.test('the JSON scan answers as jsonRepeatsKey does, on generated objects with repeated and escaped keys', (t) => {
  const r = prng(42);
  const seen = new Map<number, number>();
  for (let i = 0; i < 4000; i++) {
    const text = randomJson(r);
    const nesting = i % 2 === 0 ? MAX_NESTING : 3 + (i % 3); // where depth decides, and where keys do
    const want = expected(text, true, nesting);
    const got = scan(text, true, nesting);
    seen.set(got, (seen.get(got) ?? 0) + 1);
    if (!want.includes(got)) { t.fail(`text ${shown(text)} at ${nesting} levels: addon ${got}, the JavaScript scans allow ${want.join(' or ')}`); break; }
  }
  for (const answer of [0, 1, 2, 3]) t.ok((seen.get(answer) ?? 0) > 20, `answer ${answer} came up ${seen.get(answer) ?? 0} times`);
  t.end();
});

t.test('a key repeated in a nested object, after the object closed, in an object left open', (t) => {
  t.equal(scan('{"a":1,"b":{"a":2},"c":[{"a":1},{"a":1}]}', true), 0, 'equal keys in different objects are no repetition');
  t.equal(scan('{"a":1,"b":{"c":2},"a":3}', true), 2, 'repeated after a nested object closed');
  t.equal(scan('{"x":{"k":1,"k":2}}', true), 2, 'repeated inside a nested object');
  t.equal(scan('{"a":1,"a":', true), 2, 'repeated in an object the text leaves open');
  const wide = `{${Array.from({ length: 5000 }, (_, i) => `"w${i}":${i}`).join(',')}}`;
  t.equal(scan(wide, true), 0, '5,000 different keys (compared sorted)');
  t.equal(scan(wide.replace('"w4999"', '"w17"'), true), 2, 'one of 5,000 keys repeated');
  t.equal(scan('{"\\u0061":1,"a":2}', true), 3, 'a key with an escape is left to the JavaScript scan');
  t.equal(jsonRepeatsKey('{"\\u0061":1,"a":2}'), true, 'which decodes it');
  t.equal(scan(`${'['.repeat(MAX_NESTING)}${']'.repeat(MAX_NESTING)}`, true), 0, `${MAX_NESTING} levels are accepted`);
  t.equal(scan(`{"a":${'['.repeat(MAX_NESTING)}${']'.repeat(MAX_NESTING)}}`, true), 1, `${MAX_NESTING + 1} levels are too deep for textProblem`);
  t.equal(scan('{"a":"\\\\"}', true), 0, 'a string ending in an escaped backslash closes');
  t.throws(() => native().policyTextScan(5 as unknown as string, MAX_NESTING, true), /expected a string/, 'a string or a type error');
  t.throws(() => native().policyTextScan('{}', 0, true), /nesting of at least 1/, 'a nesting of at least 1');
  t.end();
});

t.test('the loader gives the same answer through the addon as through its own scans', (t) => {
  const doc = scalePolicy('rules10k');
  const text = JSON.stringify(doc);
  t.equal(scan(text, true), 0, 'the 10,000-rule policy of the scale benchmark is clean');
  const repeated = text.replace('"nic":"tws0"', '"nic":"tws0","nic":"tws0"');
  const r = policyParse(repeated, 'x.json', { shadows: false });
  t.equal(r.policy, null, 'a repeated key is refused');
  t.match(r.problems[0], { code: 'duplicate-key', line: 1 }, 'with its place, found by the located way');
  const deep = text.replace('"tags":["app-0"', `"tags":[${'['.repeat(70)}${']'.repeat(70)},"app-0"`);
  t.match(policyParse(deep, 'x.json', { shadows: false }).problems[0], { code: 'too-deep' }, 'nesting past the limit is refused before any parser');
  t.end();
});
