/**
 * Policy fuzzing, for the test suite and as a long run
 * (`tapwall bench fuzz-policy --docs N --seed S`): the example policies, as
 * YAML and as JSON, mutated from a seed (bytes changed, lines dropped or
 * repeated, values swapped for other types, huge lists, alias bombs,
 * unresolved aliases, deep nesting, long group chains and cycles, names
 * from Object.prototype), each loaded, validated and, when valid,
 * compiled. The loader must never throw and never hang; a refused document
 * must carry at least one error with a file, a line and a column.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { policyCompile } from '../src/policy/compile.js';
import { policyParse } from '../src/policy/load.js';
import { prng } from '../tools/prng.js';

/** The examples folder, whether this runs from bench/ (tests) or dist/bench/ (the CLI). */
const examplesDir = [new URL('../examples/', import.meta.url), new URL('../../examples/', import.meta.url)].map((u) => fileURLToPath(u)).find((d) => existsSync(d))!;
const EXAMPLES = ['three-tier.yaml', 'dual-stack.json'].map((f) => readFileSync(`${examplesDir}${f}`, 'utf8'));

/** Hostile documents of each class the loader must refuse cleanly. */
export function hostileDocuments(): Array<[string, string]> {
  const laughs = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
  for (const [x, y] of [['b', 'a'], ['c', 'b'], ['d', 'c'], ['e', 'd'], ['f', 'e'], ['g', 'f']]) laughs.push(`${x}: &${x} [${Array(9).fill(`*${y}`).join(',')}]`);
  return [
    ['alias bomb', `${laughs.join('\n')}\nsections: []\n`],
    ['unresolved alias', 'workloads: *nope\nsections: []\n'],
    ['deep flow nesting', `sections: ${'['.repeat(10_000)}${']'.repeat(10_000)}\n`],
    ['deep JSON nesting', `{"sections": ${'['.repeat(50_000)}${']'.repeat(50_000)}}`],
    ['deep block nesting', `${Array.from({ length: 400 }, (_, i) => `${' '.repeat(i * 2)}k${i}:`).join('\n')} 1\n`],
    ['a 20,000-group chain', `groups:\n${Array.from({ length: 20_000 }, (_, i) => `  g${i}: { groups: [g${i + 1}] }`).join('\n')}\n  g20000: { cidrs: [10.0.0.0/8] }\nsections: []\n`],
    ['a 5,000-group cycle', `groups:\n${Array.from({ length: 5000 }, (_, i) => `  g${i}: { groups: [g${(i + 1) % 5000}] }`).join('\n')}\nsections: []\n`],
    ['prototype names', 'workloads:\n  constructor: { nic: twa, mac: "02:00:00:00:00:01", ips: [10.0.0.1], tags: [toString] }\ngroups:\n  __proto__: { tags: [x] }\n  valueOf: { workloads: [hasOwnProperty] }\nsections: []\n'],
    ['a huge list of unknown names', `groups:\n  g: { workloads: [${Array.from({ length: 20_000 }, (_, i) => `w${i}`).join(', ')}] }\nsections: []\n`],
    ['duplicate keys everywhere', `groups:\n${Array.from({ length: 20_000 }, () => '  g: { cidrs: [10.0.0.0/8] }').join('\n')}\nsections: []\n`],
    ['NUL bytes', '\u0000\u0001workloads: {}\n'],
    ['a YAML tag', 'sections: !!binary aGVsbG8=\n'],
    ['not a number', 'workloads:\n  a: { nic: twa, mac: "02:00:00:00:00:01", ips: [10.0.0.1], vlans: [1e400] }\nsections: []\n'],
  ];
}

function mutate(text: string, rnd: () => number): string {
  const pick = <T>(l: readonly T[]): T => l[Math.floor(rnd() * l.length)];
  const lines = text.split('\n');
  const edits = 1 + Math.floor(rnd() * 4);
  for (let e = 0; e < edits; e++) {
    const i = Math.floor(rnd() * lines.length);
    const roll = rnd();
    if (roll < 0.2) lines.splice(i, 1);
    else if (roll < 0.35) lines.splice(i, 0, lines[Math.floor(rnd() * lines.length)]);
    else if (roll < 0.6) {
      // Swap a value for one of another type or shape.
      lines[i] = lines[i].replace(/: [^,{}\[\]]+/, `: ${pick(['[]', '{}', '~', '-1', '1e99', '"x"', '[1, [2]]', '{ a: b }', 'yes', '*x', '&x y', '"10.0.0.0/33"', '"fe80::1%eth0"', '"64:ff9b::10.0.0.1"', 'tcp/70000', 'icmp/999'])}`);
    } else if (roll < 0.8) {
      const line = lines[i];
      const at = Math.floor(rnd() * (line.length + 1));
      lines[i] = line.slice(0, at) + pick(['[', ']', '{', '}', ':', '-', '"', "'", '&a ', '*a', '\t', '#', ',', '\u0000', 'é', '\u202e']) + line.slice(at);
    } else if (roll < 0.9) lines[i] = lines[i].replace(/\b(web|app|db|front|api|cache)\b/, pick(['constructor', '__proto__', 'toString', 'w e b', '', 'x'.repeat(300)]));
    else lines.splice(i, 0, `${' '.repeat(Math.floor(rnd() * 8))}extra${Math.floor(rnd() * 100)}: ${pick(['1', '[a]', '{b: c}'])}`);
  }
  return lines.join('\n');
}

export interface PolicyFuzzReport {
  seed: number;
  documents: number;
  valid: number;
  refused: number;
  seconds: number;
  /** What went wrong (at most 20): a throw, or a refusal without a located error. */
  problems: string[];
}

/** Load one document the way `tapwall check` and the API do; describe any breach of the contract. */
export function loadChecked(name: string, text: string): { valid: boolean; problem: string | null } {
  try {
    const { policy, problems } = policyParse(text, `${name}.yaml`);
    if (policy) {
      policyCompile(policy);
      return { valid: true, problem: null };
    }
    const located = problems.filter((p) => p.severity === 'error' && p.line >= 1 && p.column >= 1 && p.file === `${name}.yaml` && p.message.length > 0);
    return { valid: false, problem: located.length > 0 ? null : `${name}: refused without a located error: ${JSON.stringify(problems.slice(0, 2))}` };
  } catch (e) {
    return { valid: false, problem: `${name}: threw ${(e as Error).name}: ${(e as Error).message.split('\n')[0]}` };
  }
}

export function fuzzPolicies(opts: { documents: number; seed: number }): PolicyFuzzReport {
  const started = performance.now();
  const rnd = prng(opts.seed);
  const sources = [...EXAMPLES, ...EXAMPLES.map((t) => JSON.stringify(parseYaml(t), null, 1))];
  const report: PolicyFuzzReport = { seed: opts.seed, documents: 0, valid: 0, refused: 0, seconds: 0, problems: [] };
  const record = (name: string, text: string) => {
    const r = loadChecked(name, text);
    report.documents++;
    if (r.valid) report.valid++; else report.refused++;
    if (r.problem && report.problems.length < 20) report.problems.push(r.problem);
  };
  for (const [name, text] of hostileDocuments()) record(name.replace(/\W+/g, '-'), text);
  for (let n = 0; report.documents < opts.documents; n++) record(`mutant-${opts.seed}-${n}`, mutate(sources[n % sources.length], rnd));
  report.seconds = (performance.now() - started) / 1000;
  return report;
}

export function formatPolicyFuzz(r: PolicyFuzzReport): string {
  return [
    `policy fuzz: ${r.documents} documents (seed ${r.seed}) in ${r.seconds.toFixed(1)} s: ${r.valid} valid, ${r.refused} refused`,
    r.problems.length === 0 ? 'every refusal carried a located error; nothing threw' : `PROBLEMS:\n  ${r.problems.join('\n  ')}`,
  ].join('\n');
}
