// The off-thread preparer (a worker thread, the result handed over in parts)
// against the inline one: the same document model, the same verdict for every
// packet at every vNIC, through new documents, tag changes, refusals and a
// document the worker let go; and the data plane gets policies it can run.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { PerformanceObserver, constants as perfConstants } from 'node:perf_hooks';
import { OffThreadPreparer } from '../src/control/offThread.js';
import { InlinePreparer, type DocumentRef, type Prepared, type Preparer } from '../src/control/prepare.js';
import { Controller } from '../src/control/controller.js';
import { MemoryStore } from '../src/control/store.js';
import type { CompiledPolicy } from '../src/policy/compile.js';
import type { Logger } from 'pino';
import type { TagMap } from '../src/control/store.js';
import { parsePrefix } from '../src/policy/addresses.js';
import { pointClassify, pointClassifyResolution } from '../src/policy/compile.js';
import { keyWrite } from '../src/packet/key.js';
import { pick, randInt, rng } from './rng.js';
import { rulePlace, startingPolicy, WorkloadsView } from '../src/policy/model.js';
import { Dataplane, type RuleCount } from '../src/datapath/dataplane.js';
import { MemoryPort } from '../src/io/memoryPort.js';
import { frameBuild } from '../src/packet/build.js';
import { TCP_SYN } from '../src/packet/parse.js';
import { policyCompile } from '../src/policy/compile.js';

function modelText(p: unknown): string {
  // Maps, and the effective policy's workloads (a view over the document's), as their entries.
  return JSON.stringify(p, (_k, v) => (v instanceof Map || v instanceof WorkloadsView ? [...v.entries()] : v));
}

/** A document of n applications (web, app, db), one big CIDR group, an emergency section. */
function docText(apps: number, seed: number): string {
  const r = rng(seed);
  const workloads: Record<string, unknown> = {};
  for (let i = 0; i < apps * 3; i++) {
    workloads[`w${i}`] = { nic: `twx${i}`, mac: `02:00:00:01:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`, ips: [`10.1.${i >> 8}.${(i & 255) + 1}`, `fd00:1::${(i + 1).toString(16)}`], tags: [`app-${i % apps}`, ['web', 'app', 'db'][Math.floor(i / apps) % 3]], host: i % 2 ? 'h1' : 'h2' };
  }
  const groups: Record<string, unknown> = { quarantined: { tags: ['quarantine'] }, web: { tags: ['web'] }, partners: { cidrs: Array.from({ length: 30_000 }, (_, i) => `172.${16 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`) } };
  for (let a = 0; a < apps; a++) groups[`app-${a}`] = { tags: [`app-${a}`] };
  const rules = [];
  for (let i = 0; i < 700; i++) {
    rules.push({ id: `r${i}`, from: pick(r, ['any', 'web', 'partners', `app-${randInt(r, 0, apps - 1)}`]), to: pick(r, ['web', `app-${randInt(r, 0, apps - 1)}`, 'partners']), services: [pick(r, ['tcp/443', 'tcp/8080', 'udp/53', 'icmp', 'tcp/1000-2000'])], action: pick(r, ['allow', 'drop', 'reject']) });
  }
  return JSON.stringify({ default: 'drop', workloads, groups, sections: [
    { name: 'emergency', rules: [{ id: 'q-out', from: 'quarantined', to: 'any', action: 'drop' }, { id: 'q-in', from: 'any', to: 'quarantined', action: 'drop' }] },
    { name: 'application', rules },
  ] });
}

function sameVerdicts(t: Tap, a: Prepared, b: Prepared, seed: number, label: string): void {
  t.same([...a.compiled.points.keys()], [...b.compiled.points.keys()], `${label}: the same vNICs`);
  t.equal(modelText(a.compiled.policy), modelText(b.compiled.policy), `${label}: the same effective policy`);
  const r = rng(seed);
  const key = new Int32Array(11);
  const ips = [...a.compiled.policy.workloads.values()].flatMap((w) => w.ips.map((p) => p.text.replace(/\/\d+$/, '')));
  ips.push('172.16.0.5', '172.16.117.47', '8.8.8.8', 'fd00:2::1');
  let bad = 0, n = 0;
  for (const [nic, p] of a.compiled.points) {
    const q = b.compiled.points.get(nic)!;
    for (let i = 0; i < 40; i++) {
      const src = parsePrefix(pick(r, ips))!, dst = parsePrefix(pick(r, ips))!;
      if (src.family !== dst.family) continue;
      keyWrite(key, 0, src.family, src.words, dst.words, pick(r, [6, 17, 1, 58]), 40000, pick(r, [443, 8080, 53, 1500, 22]));
      n++;
      if (pointClassify(p.egress.tables, src.family, key, 0) !== pointClassify(q.egress.tables, src.family, key, 0)) bad++;
      if (pointClassifyResolution(p.egress.tables, src.family, key, 0) !== pointClassifyResolution(q.egress.tables, src.family, key, 0)) bad++;
    }
  }
  t.equal(bad, 0, `${label}: the same first matching rule for ${n} packets`);
}
type Tap = typeof t;

t.test('off the thread and inline: the same policy, change after change', async (t) => {
  const off = new OffThreadPreparer(), inline = new InlinePreparer();
  t.teardown(() => off.close());
  const steps: Array<{ label: string; doc: DocumentRef; tags: TagMap; host: string | null }> = [];
  const d1: DocumentRef = { id: 1, text: docText(20, 1), source: 'one.json' };
  const d2: DocumentRef = { id: 2, text: docText(25, 2), source: 'two.json' };
  const q = (w: string): TagMap => ({ [w]: [{ tag: 'quarantine', reason: 'test', by: 'test', added: new Date().toISOString(), expiresAt: null }] });
  steps.push({ label: 'first document', doc: d1, tags: {}, host: 'h1' });
  steps.push({ label: 'a quarantine', doc: d1, tags: q('w3'), host: 'h1' });
  steps.push({ label: 'lifted', doc: d1, tags: {}, host: 'h1' });
  steps.push({ label: 'a new document', doc: d2, tags: q('w5'), host: 'h1' });
  steps.push({ label: 'every vNIC', doc: d2, tags: q('w5'), host: null });
  steps.push({ label: 'back to the first', doc: { ...d1, id: 3 }, tags: {}, host: 'h1' });
  // A reload of the same text, then one with a single rule edited: handed over against the document held.
  steps.push({ label: 'the same text again', doc: { ...d1, id: 4 }, tags: {}, host: 'h1' });
  const edited = JSON.parse(d1.text) as { sections: Array<{ rules: Array<{ action: string }> }> };
  edited.sections[1].rules[5].action = edited.sections[1].rules[5].action === 'allow' ? 'drop' : 'allow';
  steps.push({ label: 'one rule edited', doc: { id: 5, text: JSON.stringify(edited), source: 'one.json' }, tags: {}, host: 'h1' });
  // Deeper edits: a rule's service (inside its list), one CIDR among the 30,000 of a large group.
  const deeper = JSON.parse(JSON.stringify(edited)) as { groups: { partners: { cidrs: string[] } }; sections: Array<{ rules: Array<{ services: string[] }> }> };
  deeper.sections[1].rules[7].services = [deeper.sections[1].rules[7].services[0] === 'tcp/9999' ? 'tcp/9998' : 'tcp/9999'];
  deeper.groups.partners.cidrs[12_345] = '192.0.2.77/32';
  steps.push({ label: 'a service and a CIDR edited', doc: { id: 6, text: JSON.stringify(deeper), source: 'one.json' }, tags: {}, host: 'h1' });
  // A rule inserted at the top: every rule moves (order, path, line and column), nothing else changes.
  const inserted = JSON.parse(JSON.stringify(deeper)) as { sections: Array<{ rules: unknown[] }> };
  inserted.sections[0].rules.unshift({ id: 'inserted', from: '192.0.2.1/32', to: 'any', action: 'drop' });
  steps.push({ label: 'a rule inserted at the top', doc: { id: 7, text: JSON.stringify(inserted, null, 1), source: 'one.json' }, tags: {}, host: 'h1' });
  let seed = 1;
  let firstParts = 0, heldAsText = false;
  let before: Prepared | null = null;
  const loaded = new Set<number>();
  for (const s of steps) {
    const partsBefore = off.parts;
    const [a, b] = await Promise.all([off.prepare(s.doc, s.tags, s.host), inline.prepare(s.doc, s.tags, s.host)]);
    // A scope's rule list (the rule count long) comes as shared memory, not copied into every result.
    t.ok([...a.compiled.points.values()].every((p) => p.egress.tables.rules.buffer instanceof SharedArrayBuffer), `${s.label}: the rule lists are shared memory`);
    // The load is measured where a document's text is read, and only there: not for a document already held.
    const read = !loaded.has(s.doc.id);
    loaded.add(s.doc.id);
    for (const [where, p] of [['off the thread', a], ['inline', b]] as const) {
      if (read) t.ok(p.load !== null && p.load.ms > 0 && p.load.freshPages >= 0, `${s.label}: ${where}, the text was loaded (${p.load?.ms.toFixed(1)} ms)`);
      else t.equal(p.load, null, `${s.label}: ${where}, the document held was not loaded again`);
    }
    if (s.label === 'first document') {
      firstParts = off.parts - partsBefore;
      // Before anything reads them (the comparisons below do): the 30,000 CIDRs of 'partners' are held as text.
      heldAsText = typeof Object.getOwnPropertyDescriptor(a.document.groups.get('partners')!, 'cidrs')?.get === 'function';
    }
    if (s.label === 'the same text again') {
      t.equal(a.document.workloads, before!.document.workloads, 'the same text again: the workloads map held is reused, not handed over');
      t.equal(a.document.groups, before!.document.groups, 'the same text again: so is the groups map');
      t.ok(off.parts - partsBefore < 10, `the same text again: a few parts (${off.parts - partsBefore}), not the document`);
    }
    if (s.label === 'one rule edited') {
      const rulesNow = a.document.sections.flatMap((x) => x.rules), rulesBefore = before!.document.sections.flatMap((x) => x.rules);
      const edit = a.document.sections[0].rules.length + 5;
      t.not(rulesNow[edit], rulesBefore[edit], 'one rule edited: the edited rule is handed over');
      t.equal(rulesNow[edit].action, b.document.sections[1].rules[5].action, 'one rule edited: with its new action');
      t.ok(rulesNow.every((r, i) => i === edit || r === rulesBefore[i]), 'one rule edited: every other rule is the object held');
    }
    if (s.label === 'a service and a CIDR edited') {
      const rulesNow = a.document.sections.flatMap((x) => x.rules), rulesBefore = before!.document.sections.flatMap((x) => x.rules);
      const edit = a.document.sections[0].rules.length + 7;
      t.not(rulesNow[edit], rulesBefore[edit], 'a service edited: the rule is handed over');
      t.ok(rulesNow.every((r, i) => i === edit || r === rulesBefore[i]), 'a service edited: every other rule is the object held');
      t.not(a.document.groups.get('partners'), before!.document.groups.get('partners'), 'a CIDR edited: the group is handed over');
      t.equal(a.document.groups.get('partners')!.cidrs[12_345].text, '192.0.2.77/32', 'a CIDR edited: with the new CIDR');
      t.equal(a.document.groups.get('web'), before!.document.groups.get('web'), 'a CIDR edited: the other groups are the objects held');
    }
    if (s.label === 'a rule inserted at the top') {
      const rulesNow = a.document.sections.flatMap((x) => x.rules), rulesBefore = before!.document.sections.flatMap((x) => x.rules);
      t.not(rulesNow[0], rulesBefore[0], 'a rule inserted: the new rule is handed over');
      t.ok(rulesNow.slice(1).every((r, i) => r === rulesBefore[i]), 'a rule inserted: every rule that moved is the object held');
      const inEmergency = a.document.sections[0].rules.length;
      t.same([0, 1, inEmergency, rulesNow.length - 1].map((o) => rulePlace(a.document, o).path), ['sections[0].rules[0]', 'sections[0].rules[1]', 'sections[1].rules[0]', `sections[1].rules[${rulesNow.length - 1 - inEmergency}]`], 'a rule inserted: the moved rules at their new places');
    }
    t.equal(modelText(a.document), modelText(b.document), `${s.label}: the same document`);
    sameVerdicts(t, a, b, seed++, s.label);
    // Group versions come as what differs from the last result taken, rule actions and shadow findings once per document.
    const members = (p: Prepared) => [...p.compiled.groups].map(([name, g]) => `${name}: ${[...g.members].join(',')}`);
    t.same(members(a), members(b), `${s.label}: the same groups and members`);
    t.same([...a.compiled.ruleAction], [...b.compiled.ruleAction], `${s.label}: the same rule actions`);
    t.same(a.shadows, b.shadows, `${s.label}: the same shadow findings`);
    t.ok(a.compiled.groups.get('partners')!.prefixes.length === 30_000, `${s.label}: a group's addresses are found when asked`);
    off.installed(a.compiled);
    inline.installed(b.compiled);
    before = a;
  }
  t.ok(firstParts > 1, `the first document is handed over in parts (${firstParts})`);
  // A large group's CIDRs go as text and become prefixes when first read (equal to the inline document's: above).
  t.ok(heldAsText, "the 30,000 CIDRs of 'partners' are held as text until something reads them");
});

t.test('a new document: this thread collects its young generation after parts of new items; rules that only moved and a tag change make none and collect nothing', async (t) => {
  const off = new OffThreadPreparer();
  t.teardown(() => off.close());
  const forced: number[] = [];
  const count = (entries: PerformanceEntry[]) => {
    for (const e of entries) {
      const d = e.detail as { kind: number; flags: number };
      if (d.kind === perfConstants.NODE_PERFORMANCE_GC_MINOR && (d.flags & perfConstants.NODE_PERFORMANCE_GC_FLAGS_FORCED) !== 0) forced.push(e.startTime);
    }
  };
  const observer = new PerformanceObserver((list) => count(list.getEntries()));
  observer.observe({ entryTypes: ['gc'] });
  t.teardown(() => observer.disconnect());
  // A collection's entry is queued by an immediate that Node schedules during the collection, so two turns
  // after the last one it is in the observer's buffer, delivered or not: take what is left there.
  const settle = async () => {
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    count(observer.takeRecords());
  };
  const doc: DocumentRef = { id: 1, text: docText(40, 9), source: 'd.json' };
  let before = off.parts;
  const first = await off.prepare(doc, {}, 'h1');
  await settle();
  const parts = off.parts - before;
  t.ok(parts >= 4, `the document came in parts (${parts})`);
  // 120 workloads, 43 groups and 702 rules, all new: collected as they come (a part of 300 rules is one
  // collection), never after the last part.
  t.ok(forced.length >= 3 && forced.length <= parts - 1, `young collections while it came (${forced.length} for ${parts} parts)`);
  off.installed(first.compiled);
  // A rule inserted at the top, and a CIDR of the large group edited (its 30,000 come again, as text, in
  // parts of their own): every other rule moved, and is the rule held, so two items are made in all.
  forced.length = 0;
  before = off.parts;
  const grown = JSON.parse(doc.text) as { groups: { partners: { cidrs: string[] } }; sections: Array<{ rules: unknown[] }> };
  grown.sections[1].rules.unshift({ id: 'inserted', from: '192.0.2.1/32', to: 'any', action: 'drop' });
  grown.groups.partners.cidrs[5] = '192.0.2.99/32';
  const moved = await off.prepare({ id: 2, text: JSON.stringify(grown), source: 'd.json' }, {}, 'h1');
  await settle();
  t.ok(off.parts - before >= 2, `the document came in parts (${off.parts - before})`);
  t.equal(forced.length, 0, 'nothing was collected for rules that only moved');
  const held = first.document.sections[1].rules;
  t.ok(moved.document.sections[1].rules.slice(1).every((r, i) => r === held[i]), 'the moved rules are the rules held');
  off.installed(moved.compiled);
  forced.length = 0;
  before = off.parts;
  const q: TagMap = { w4: [{ tag: 'quarantine', reason: 'test', by: 'test', added: new Date().toISOString(), expiresAt: null }] };
  await off.prepare(doc, q, 'h1');
  await settle();
  t.ok(off.parts > before, 'the tag change came back in parts');
  t.equal(forced.length, 0, 'and nothing was collected for it');
});

t.test('a bad document is refused with located problems; the worker carries on', async (t) => {
  const off = new OffThreadPreparer();
  t.teardown(() => off.close());
  await t.rejects(off.prepare({ id: 1, text: 'default: drop\nsections:\n  - name: s\n    rules:\n      - { id: a, from: nope, to: any, action: allow }\n', source: 'bad.yaml' }, {}, null), { problems: [{ file: 'bad.yaml', line: 5, code: 'unknown-group' }] });
  const ok = await off.prepare({ id: 2, text: readFileSync('examples/three-tier.yaml', 'utf8'), source: 'three-tier.yaml' }, {}, null);
  t.equal(ok.compiled.points.size, 5, 'the next document is compiled');
  // A document the worker no longer keeps is sent again in full.
  off.installed(ok.compiled);
  for (let id = 3; id < 8; id++) await off.prepare({ id, text: docText(2, id), source: `d${id}.json` }, {}, null);
  const again = await off.prepare({ id: 2, text: readFileSync('examples/three-tier.yaml', 'utf8'), source: 'three-tier.yaml' }, {}, null);
  t.equal(again.compiled.points.size, 5, 'an old document is prepared again');
});

t.test('a part this side cannot place fails the preparation, and the next one starts again from nothing', async (t) => {
  const off = new OffThreadPreparer();
  t.teardown(() => off.close());
  const three = readFileSync('examples/three-tier.yaml', 'utf8');
  const first = await off.prepare({ id: 1, text: three, source: 'three-tier.yaml' }, {}, null);
  off.installed(first.compiled);
  // A part as the worker might send it wrongly: rules for a section that is not the one being filled.
  const onPart = (off as unknown as { onPart(m: unknown): void }).onPart.bind(off);
  const pending = off.prepare({ id: 2, text: docText(2, 5), source: 'd.json' }, {}, null);
  const letGo = (off as unknown as { worker: import('node:worker_threads').Worker }).worker;
  onPart({ t: 'doc', id: 2, base: null, source: 'd.json', default: 'drop', spoofguard: true, services: [], places: { lines: new Int32Array(2), columns: new Int32Array(2) }, ruleFrom: null, size: 2 });
  onPart({ t: 'rules', index: 3, held: Int32Array.of(-1), whole: [{}] });
  await t.rejects(pending, /rules out of place/, 'the preparation fails');
  // The worker was let go with what this side held; the next preparation goes to a new one, text and all.
  // What the worker let go had posted before it ended still arrives (here at once, as a race would have it
  // come): none of it is taken into the next preparation.
  const nextPrepared = off.prepare({ id: 1, text: three, source: 'three-tier.yaml' }, {}, null);
  letGo.emit('message', { t: 'error', message: 'a part from the worker let go' });
  letGo.emit('error', new Error('the worker let go failed'));
  const next = await nextPrepared;
  t.equal(next.compiled.points.size, 5, 'the next document is compiled');
  t.not(next.document, first.document, 'by a worker that sent it again, whole');
});

t.test('a daemon starts through the compiling thread: the document it installs is the one the next change goes against', async (t) => {
  const text = docText(3, 11);
  const store = new MemoryStore(text, 'd.json');
  let installed: CompiledPolicy | null = null;
  const target = { setPolicy: (c: CompiledPolicy) => { installed = c; } };
  const preparer = new OffThreadPreparer();
  const controller = new Controller(store, target, { host: 'h1', preparer });
  t.teardown(() => controller.close());
  await controller.start();
  t.ok(preparer.parts > 0, 'the first policy came from the compiling thread');
  const first = installed!;
  t.ok(first.points.size > 0, "this host's vNICs have points");
  // One rule edited: every other rule of the new document is the object installed at the start (no second copy was made).
  const doc = JSON.parse(text) as { sections: Array<{ rules: Array<Record<string, unknown>> }> };
  doc.sections[1].rules[5].action = doc.sections[1].rules[5].action === 'drop' ? 'allow' : 'drop';
  await controller.putPolicy(JSON.stringify(doc), null, 'test');
  const next = installed!;
  t.not(next, first, 'the edited document is in force');
  const same = next.rules.filter((r, i) => r === first.rules[i]).length;
  t.equal(same, first.rules.length - 1, 'every unchanged rule is the object installed at the start');
});

t.test('a compiling thread that fails at start: the first policy is compiled inline; a bad document still refuses the start', async (t) => {
  const warnings: string[] = [];
  const log = { warn: (_o: unknown, m: string) => warnings.push(m), info: () => undefined, error: () => undefined } as unknown as Logger;
  const broken: Preparer = { offThread: true, prepare: () => Promise.reject(new Error('the compiling thread exited (code 1)')), installed: () => undefined, close: async () => undefined };
  let installed: CompiledPolicy | null = null;
  const target = { setPolicy: (c: CompiledPolicy) => { installed = c; } };
  const controller = new Controller(new MemoryStore(readFileSync('examples/three-tier.yaml', 'utf8'), 'three-tier.yaml'), target, { preparer: broken, log });
  t.teardown(() => controller.close());
  await controller.start();
  t.equal(installed!.points.size, 5, 'the policy is in force');
  t.match(warnings, [/compiled on this thread instead/], 'the fallback is logged');
  const refusing = new Controller(new MemoryStore('default: drop\nsections:\n  - name: s\n    rules:\n      - { id: a, from: nope, to: any, action: allow }\n', 'bad.yaml'), target, { preparer: new OffThreadPreparer(), log });
  t.teardown(() => refusing.close());
  await t.rejects(refusing.start(), { status: 400, code: 'invalid-policy' }, 'an invalid document refuses the start, thread or not');
});

t.test("a reload that moves every rule: the data plane's per-rule counters follow their rules, worked out off its thread", async (t) => {
  const doc = (rules: Array<Record<string, unknown>>) => JSON.stringify({
    default: 'drop',
    workloads: {
      a: { nic: 'twq-a', mac: '02:00:00:00:72:01', ips: ['10.72.0.1'], host: 'h1' },
      b: { nic: 'twq-b', mac: '02:00:00:00:72:02', ips: ['10.72.0.2'], host: 'h1' },
    },
    sections: [{ name: 's', rules }],
  });
  const web = { id: 'web', from: 'any', to: 'any', services: ['tcp/80'], action: 'allow' };
  const ssh = { id: 'ssh', from: 'any', to: 'any', services: ['tcp/22'], action: 'allow' };
  const never = { id: 'never', from: 'any', to: 'any', services: ['tcp/9'], action: 'allow' };
  const retired: RuleCount[] = [];
  const ports = new Map<string, MemoryPort>();
  const dp = new Dataplane(policyCompile(startingPolicy()), [], {
    flowCapacity: 1024,
    portOpener: (s) => { const p = new MemoryPort(s.name, false); ports.set(s.name, p); return p; },
    onRulesRetired: (c) => retired.push(...c),
  });
  t.teardown(() => dp.stop());
  let installed: CompiledPolicy | null = null;
  const target = { setPolicy: (c: CompiledPolicy) => { installed = c; dp.setPolicy(c); } };
  const controller = new Controller(new MemoryStore(doc([web, ssh, never]), 'd.json'), target, { host: 'h1', preparer: new OffThreadPreparer() });
  t.teardown(() => controller.close());
  await controller.start();
  const src = dp.ports.findIndex((p) => p.spec.name === 'twq-a');
  const syn = (sport: number, dport: number) => {
    const sink = ports.get('twq-b')!, before = sink.sentCount;
    ports.get('twq-a')!.pushFrame(frameBuild({ family: 4, proto: 6, srcMac: '02:00:00:00:72:01', dstMac: '02:00:00:00:72:02', src: '10.72.0.1', dst: '10.72.0.2', sport, dport, flags: TCP_SYN }));
    dp.pump(src);
    return sink.sentCount - before;
  };
  t.same([syn(1, 80), syn(2, 80), syn(3, 22)], [1, 1, 1], 'three connections forwarded');
  const count = (id: string) => dp.ruleCounts().find((c) => c.id === id)?.connections;
  t.same([count('web'), count('ssh')], [2, 1], 'counted per rule');
  // A rule inserted above them all and ssh removed: every rule moves.
  const top = { id: 'top', from: 'any', to: 'any', services: ['tcp/7'], action: 'drop' };
  await controller.putPolicy(doc([top, web, never]), null, 'test');
  t.ok(installed!.ruleFrom && installed!.ruleFrom.from.length === 3, 'where each rule stood came with the policy');
  t.same([...installed!.ruleFrom!.from], [-1, 0, 2], 'top is new, web was first, never third');
  t.same([count('top'), count('web'), count('never')], [0, 2, 0], "web's counts moved with it");
  t.same(retired.map((c) => [c.id, c.connections]), [['ssh', 1]], "the removed rule's counts went to whoever keeps them");
  t.equal(syn(4, 80), 1, 'forwarding on');
  t.equal(count('web'), 3, 'and web counts on from where it was');
});
