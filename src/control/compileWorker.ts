/**
 * The worker thread that validates and compiles (prepare.ts), for
 * OffThreadPreparer (offThread.ts).
 *
 * Protocol (messages, one at a time; the main thread asks for each part so
 * that every part is taken in its own turn of its event loop)
 *   main -> worker  { t: 'text', id, slice }             a long text, in slices first
 *                   { t: 'prepare', doc, tags, host, groupsOf }  start a preparation
 *                     (doc.sliced: its text is the slices sent before it;
 *                     groupsOf: the result whose groups the main thread holds)
 *                   { t: 'next' }                        send the next part
 *                   { t: 'installed', dropTables, dropVersions, dropDocs }
 *                     what the main thread has dropped: sent again if a later
 *                     result needs it
 *   worker -> main  a sequence of parts ending with { t: 'final' }, or one
 *                   { t: 'refused', problems } / { t: 'error', message };
 *                   small parts travel together as { t: 'batch', list }
 *                   (as many as one slice weighs), so that a tag change's
 *                   few parts cost one message, not a round trip each.
 *
 * What a result sends (SerializedX types in offThread.ts): the document (the
 * first time its number is prepared) in slices of a few hundred rules,
 * workloads and group addresses; the workloads whose tags the dynamic tags
 * change; resolved groups the main thread does not have (by version); rule
 * tables it does not have (by number; their typed arrays live in
 * SharedArrayBuffers, so handing one over copies nothing); and the points.
 * The final part names each group's version only where it differs from the
 * result whose groups the main thread holds (a tag change: a few of 2,000),
 * and carries the document's rule actions and shadow findings only with a
 * document the main thread did not have.
 */
import { isDeepStrictEqual } from 'node:util';
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { placeSelf, threadId } from '../util/placement.js';
import { groupsDiffering, type CompiledPolicy, type FamilyTable, type ResolvedGroup } from '../policy/compile.js';
import { rulePlaces, sameGroup, WorkloadsView, type Policy, type Rule } from '../policy/model.js';
import { DocumentCache, localWorkloads, PrepareRefused, prepareNow, type DocumentLoad, type DocumentRef, type EffectiveMemo } from './prepare.js';
import type { TagMap } from './store.js';

/** The worker's nice value: weight 335 against the forwarding thread's 1024. */
const COMPILE_NICE = 5;

// A lower CPU priority for this thread (Linux: a thread's id names it to setpriority): where cores
// are short, the forwarding thread gets three times its share. Not the lowest: on a hypervisor whose
// cores are busy with guests, a thread at nice 19 gets about 1% of a core, and a quarantine would wait
// seconds for its compile (measured with three busy loops on two cores: 1.8-5.4 s at nice 19).
try {
  setPriority(threadId(), COMPILE_NICE);
} catch {
  // Not Linux, or not allowed: the thread runs at the process's priority.
}
// Off the forwarding thread's CPU when the daemon keeps it to itself (util/placement.ts).
try {
  placeSelf((workerData as { cpus?: number[] } | null)?.cpus ?? []);
} catch {
  // The addon cannot be loaded here: the forwarding thread's next sweep moves this thread.
}

const SLICE = 300; // rules, workloads or groups per part
/** A group with more CIDRs than this goes with none, and its CIDRs follow as text, CIDR_TEXT_SLICE per part. */
const CIDR_SLICE = 4_000;
const CIDR_TEXT_SLICE = 50_000;
const MEMBER_SLICE = 5_000;

const docs = new DocumentCache();
let previous: CompiledPolicy | null = null;
/** The last effective policy, patched by the next tag change instead of made whole. */
const effectiveMemo: { last: EffectiveMemo | null } = { last: null };
/** Documents, tables and group versions the main thread has. */
const mainDocs = new Set<number>();
const mainTables = new Set<number>();
const mainVersions = new Set<number>();
/** The groups of the last result sent, by the result's number: the next one sends only what differs from them. */
let lastSent: { id: number; document: Policy; groups: CompiledPolicy['groups'] } | null = null;
let nextResultId = 1;
const tableIds = new WeakMap<FamilyTable, number>();
let nextTableId = 1;
const shared = new WeakMap<FamilyTable, unknown>();
let parts: unknown[] = [];
/** The tag-change path to run once a new document is handed over (warmTagPath). */
let warmPending: (() => void) | null = null;

function tableId(t: FamilyTable): number {
  let id = tableIds.get(t);
  if (id === undefined) tableIds.set(t, (id = nextTableId++));
  return id;
}

/** A typed array copied into shared memory (read by both threads, written by neither). */
function share<T extends Int32Array>(a: T): Int32Array {
  const out = new Int32Array(new SharedArrayBuffer(Math.max(4, a.byteLength)), 0, a.length);
  out.set(a);
  return out;
}

/**
 * A scope's rule orders in shared memory, copied once per list: the compiler
 * keeps a scope's list per document (the same object at every tag change),
 * and a list cloned into each result was the whole rule count again (40 KB
 * at 10,000 rules, 400 KB at 100,000) for both threads to copy at every
 * tag change.
 */
const sharedOrders = new WeakMap<Int32Array, Int32Array>();
function sharedRuleOrders(a: Int32Array): Int32Array {
  let s = sharedOrders.get(a);
  if (s === undefined) sharedOrders.set(a, (s = share(a)));
  return s;
}

function serializeTable(t: FamilyTable): unknown {
  let s = shared.get(t);
  if (!s) {
    const c = t.classes, r = t.trie;
    s = {
      id: tableId(t),
      trie: { dims: r.dims, count: r.count, ruleLo: share(r.ruleLo), ruleHi: share(r.ruleHi), nodes: share(r.nodes), leaves: share(r.leaves), roots: share(r.roots), rootMin: share(r.rootMin), stats: r.stats },
      classes: { family: c.family, bounds: share(c.bounds), cls: share(c.cls), count: c.count, intervals: c.intervals, hosts: share(c.hosts), hostMask: c.hostMask, classes: c.classes },
      atomRule: share(t.atomRule),
      entries: t.entries,
    };
    shared.set(t, s);
  }
  return s;
}

/**
 * isDeepStrictEqual for plain data: what a loaded rule or workload is made
 * of (plain objects, arrays, strings, numbers, booleans, null). Anything
 * else (a Map, a typed array, a class's instance) goes to isDeepStrictEqual
 * itself. At 100,000 rules the general one took 1.7 s of a reload.
 */
function samePlain(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return typeof a === 'number' && typeof b === 'number' && Object.is(a, b);
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!samePlain(a[i], b[i])) return false;
    return true;
  }
  if (Object.getPrototypeOf(a) !== Object.prototype || Object.getPrototypeOf(b) !== Object.prototype) return isDeepStrictEqual(a, b);
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) if (!Object.hasOwn(b, k) || !samePlain((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) return false;
  return true;
}

/**
 * Each of `items` as itself, or as the index of an equal item of `before`
 * (found by `keyOf`): what the main thread already holds is not sent again.
 */
function againstBase<T>(items: T[], before: T[] | null, keyOf: (x: T, i: number) => string | number, same: (a: T, b: T) => boolean = samePlain): Array<T | number> {
  if (before === null) return items;
  const at = new Map<string | number, number>();
  before.forEach((x, i) => at.set(keyOf(x, i), i));
  return items.map((x, i) => {
    const k = at.get(keyOf(x, i));
    return k !== undefined && same(x, before[k]) ? k : x;
  });
}

/**
 * A document as parts. When the main thread holds an earlier document that
 * this thread still has (`base`), every workload, group and rule equal to
 * one of the base's goes as that one's index: the main thread reuses its own
 * object. A reload that edits a few rules then hands over those few, and the
 * forwarding thread does not build (and collect) a new copy of 10,000 rules
 * and workloads, or of a group of a million addresses.
 */
function documentParts(id: number, doc: Policy, out: unknown[], base: { id: number; doc: Policy } | null): void {
  // Where each rule stood in the base: the forwarding thread moves its per-rule counters with one pass over
  // this instead of keying 100,000 rules by id in its swap's turn (0.5 s there); below, it finds the moved rules.
  const baseRules = base ? base.doc.sections.flatMap((x) => x.rules) : null;
  const ruleFrom = baseRules === null ? null : rulePlaces(baseRules, doc.sections.flatMap((x) => x.rules));
  // Both in shared memory: this thread touches their pages, not the forwarding thread (13 µs a page on first
  // touch here; 1.2 MB at 100,000 rules).
  const places = { lines: share(doc.places.lines), columns: share(doc.places.columns) };
  out.push({ t: 'doc', id, base: base?.id ?? null, source: doc.source, default: doc.default, spoofguard: doc.spoofguard, services: [...doc.services.values()], places, ruleFrom: ruleFrom && share(ruleFrom), size: doc.places.lines.length });
  // Every item the base's, in the base's order: the main thread takes the base's whole map.
  const unchanged = (list: unknown[], before: ReadonlyMap<string, unknown> | undefined) => before !== undefined && list.length === before.size && list.every((x, i) => x === i);
  const workloads = againstBase([...doc.workloads.values()], base ? [...base.doc.workloads.values()] : null, (w) => w.name);
  if (unchanged(workloads, base?.doc.workloads)) out.push({ t: 'workloads', list: [], same: true });
  else for (let i = 0; i < workloads.length; i += SLICE) out.push({ t: 'workloads', list: workloads.slice(i, i + SLICE) });
  const groups = againstBase([...doc.groups.values()], base ? [...base.doc.groups.values()] : null, (g) => g.name, sameGroup);
  if (unchanged(groups, base?.doc.groups)) {
    out.push({ t: 'groups', list: [], same: true });
    groups.length = 0;
  }
  let batch: unknown[] = [];
  for (const g of groups) {
    if (typeof g === 'number' || g.cidrs.length <= CIDR_SLICE) batch.push(g);
    else {
      batch.push({ ...g, cidrs: [] });
      out.push({ t: 'groups', list: batch });
      batch = [];
      // As their canonical text, one string per part: the forwarding thread keeps the text and makes
      // the prefixes only when something asks for them (a million CIDRs as objects: 150 MB of its heap).
      for (let i = 0; i < g.cidrs.length; i += CIDR_TEXT_SLICE) out.push({ t: 'cidrs', group: g.name, text: g.cidrs.slice(i, i + CIDR_TEXT_SLICE).map((c) => c.text).join('\n') });
    }
    if (batch.length >= SLICE) { out.push({ t: 'groups', list: batch }); batch = []; }
  }
  if (batch.length > 0) out.push({ t: 'groups', list: batch });
  // Rules by section and id. One that only moved (a rule inserted or removed above it) is the same rule: where
  // rules stand went with the document (its places), so the forwarding thread takes the one it holds.
  // A part says for each of its rules the base's index, or -1 for the next of its whole ones: a typed array
  // costs the main thread a copy to read, where a list of 30,000 numbers cost it 6-9 ms.
  let first = 0;
  doc.sections.forEach((s, index) => {
    out.push({ t: 'section', name: s.name, size: s.rules.length });
    for (let i = 0; i < s.rules.length; i += SLICE) {
      const n = Math.min(SLICE, s.rules.length - i);
      const held = new Int32Array(n);
      const whole: Rule[] = [];
      for (let j = 0; j < n; j++) {
        const r = s.rules[i + j];
        const k = baseRules === null || ruleFrom === null ? -1 : ruleFrom[first + i + j];
        if (k >= 0 && samePlain(r, baseRules![k])) held[j] = k;
        else { held[j] = -1; whole.push(r); }
      }
      out.push({ t: 'rules', index, held, whole });
    }
    first += s.rules.length;
  });
}

/** The newest document the main thread holds that this thread still has, to send a new one against. */
function baseForMain(): { id: number; doc: Policy } | null {
  let best: { id: number; doc: Policy } | null = null;
  for (const id of mainDocs) {
    const doc = docs.get(id);
    if (doc && (best === null || id > best.id)) best = { id, doc };
  }
  return best;
}

/** What goes back for a preparation; `before`: the policy compiled before it (whose groups the main thread may hold). */
function resultParts(docId: number, document: Policy, compiled: CompiledPolicy, compileMs: number, load: DocumentLoad | null, shadows: unknown[], shadowCount: number, before: CompiledPolicy | null, groupsOf: number | null): unknown[] {
  const out: unknown[] = [];
  const newDocument = !mainDocs.has(docId);
  if (newDocument) {
    documentParts(docId, document, out, baseForMain());
    mainDocs.add(docId);
  }
  // Against the groups the main thread holds, when they are this document's: name -> version of those that differ.
  const against = lastSent !== null && lastSent.id === groupsOf && lastSent.document === document ? lastSent.groups : null;
  const groupVersions: Array<[string, number]> = [];
  // The workloads the dynamic tags replace: a view's own list, without walking the inventory.
  const effective = compiled.policy.workloads;
  const overrides = effective instanceof WorkloadsView && effective.base === document.workloads
    ? [...effective.changed.values()]
    : [...effective.values()].filter((w) => document.workloads.get(w.name) !== w);
  for (let i = 0; i < overrides.length; i += SLICE) out.push({ t: 'effective', list: overrides.slice(i, i + SLICE) });
  let batch: unknown[] = [], size = 0;
  const flush = () => { if (batch.length > 0) out.push({ t: 'resolved', list: batch }); batch = []; size = 0; };
  // Of those, only the names that can differ are looked at (a tag change's few, not 2,000).
  const differing = against === null ? null : groupsDiffering(against, compiled.groups);
  const candidates: Iterable<[string, ResolvedGroup]> = differing === null ? compiled.groups : [...differing].map((name): [string, ResolvedGroup] => [name, compiled.groups.get(name)!]);
  for (const [name, g] of candidates) {
    if (against !== null && against.get(name) === g) continue;
    groupVersions.push([name, g.version]);
    if (mainVersions.has(g.version)) continue;
    // A new document's group that resolves as the one the main thread holds: it keeps its own.
    const held = before?.groups.get(name);
    if (held && held !== g && mainVersions.has(held.version) && sameResolved(held, g)) {
      batch.push({ name, version: g.version, sameAs: held.version });
      size += 1;
      mainVersions.add(g.version);
      continue;
    }
    batch.push(serializeGroup(name, g));
    size += g.members.size + 1;
    mainVersions.add(g.version);
    if (size >= MEMBER_SLICE) flush();
  }
  flush();
  // Tables by scope (vNICs with the same rules share one set of tables).
  const scopes: Array<Record<string, unknown>> = [];
  const scopeIndex = new Map<unknown, number>();
  const nics: string[] = [], workloads: string[] = [], scopeOf: number[] = [];
  const ids = (list: FamilyTable[]) => list.map((t) => {
    const id = tableId(t);
    if (!mainTables.has(id)) { out.push({ t: 'table', table: serializeTable(t) }); mainTables.add(id); }
    return id;
  });
  for (const [nic, p] of compiled.points) {
    const tables = p.egress.tables;
    let k = scopeIndex.get(tables);
    if (k === undefined) {
      k = scopes.length;
      scopeIndex.set(tables, k);
      scopes.push({ v4: ids(tables.v4), v6: ids(tables.v6), r4: ids(tables.r4), r6: ids(tables.r6), ether: tables.ether, rules: sharedRuleOrders(tables.rules) });
    }
    nics.push(nic);
    workloads.push(p.egress.workload);
    scopeOf.push(k);
  }
  const id = nextResultId++;
  out.push({
    t: 'final', id, docId, compileMs, load, scopes, nics, workloads, scopeOf,
    groups: { base: against === null ? null : groupsOf, versions: groupVersions },
    document: newDocument ? { ruleAction: compiled.ruleAction, ruleFlags: compiled.ruleFlags, shadows, shadowCount } : null,
    stats: compiled.stats,
  });
  lastSent = { id, document, groups: compiled.groups };
  return out;
}

/** Do two resolved groups say the same: definition, members, addresses (in the same order)? */
function sameResolved(a: ResolvedGroup, b: ResolvedGroup): boolean {
  if (a.members.size !== b.members.size || a.direct.size !== b.direct.size) return false;
  for (const m of b.members) if (!a.members.has(m)) return false;
  for (const m of b.direct) if (!a.direct.has(m)) return false;
  if (!sameGroup(a.definition, b.definition)) return false;
  const pa = a.prefixes, pb = b.prefixes;
  if (pa.length !== pb.length) return false;
  for (let i = 0; i < pa.length; i++) if (pa[i].text !== pb[i].text) return false;
  return true;
}

function serializeGroup(name: string, g: ResolvedGroup): unknown {
  return { name, version: g.version, signature: g.signature, direct: [...g.direct], members: [...g.members] };
}

/** A rule the main thread holds, named by index in a part of rules: what it costs there against a whole rule. */
const HELD_RULE_WEIGHT = 1 / 20;

/** What taking a part costs the main thread, roughly in workloads or rules: a table is shared memory, cheap to take. */
function partWeight(part: unknown): number {
  const list = (part as { list?: unknown[] }).list;
  // An index into a document the main thread holds costs it next to nothing.
  if (list) { let n = 0; for (const x of list) if (typeof x !== 'number') n++; return n + list.length / 100; }
  // A held rule is two array slots there: the arrays grow into fresh memory, whose pages cost 13 µs each on
  // first touch here (at a hundredth, a message of 30,000 held rules took 5-9 ms).
  const rules = part as { held?: Int32Array; whole?: unknown[] };
  if (rules.held && rules.whole) return rules.whole.length + rules.held.length * HELD_RULE_WEIGHT;
  // A slice of a large group's CIDRs as text (a megabyte): a message of its own.
  if ((part as { t: string }).t === 'cidrs') return SLICE;
  // The document's and a section's lists of rules are made at their length (fresh memory for a long one).
  const made = part as { t: string; size?: number };
  if ((made.t === 'doc' || made.t === 'section') && made.size !== undefined) return 5 + made.size * HELD_RULE_WEIGHT;
  return (part as { t: string }).t === 'final' ? 1 + (part as { nics: string[] }).nics.length / 10 : 5;
}

/**
 * The next parts, as many as fit in one short turn of the main thread
 * (the weight of one slice): a tag change's few parts go in one message
 * instead of a round trip each; a whole document still goes slice by slice.
 */
function send(): void {
  if (parts.length === 0) return;
  let weight = partWeight(parts[0]);
  let n = 1;
  while (n < parts.length && weight + partWeight(parts[n]) <= SLICE) weight += partWeight(parts[n++]);
  parentPort!.postMessage(n === 1 ? parts.shift() : { t: 'batch', list: parts.splice(0, n) });
  if (parts.length === 0 && warmPending !== null) {
    const warm = warmPending;
    warmPending = null;
    setImmediate(warm);
  }
}

const WARM_ROUNDS = 6;

/**
 * Run a tag change's path a few times, on a throwaway chain of this thread's
 * state, once a new document is handed over. The first tag change on a
 * document fills its caches (each rule's keys, each scope's rules) and, after
 * a start, runs code V8 has not optimised yet: the first quarantines took
 * 10-27 ms from the call, the compile in this thread 10-14 ms of it, 1.2 ms
 * from the fourth. Nothing is kept but what a real change would fill too;
 * the real memo and previous policy are not touched. One round per turn, so
 * that a real change waits at most one round. The tag is one a group
 * selects, added to and removed from one of this host's workloads.
 */
function warmTagPath(doc: DocumentRef, tags: TagMap, host: string | null): void {
  const document = docs.get(doc.id);
  if (!document || previous === null) return;
  const local = localWorkloads(document, host);
  const workload = local === null ? document.workloads.values().next().value : document.workloads.get(local.values().next().value ?? '');
  if (!workload) return;
  let tag: string | undefined;
  for (const g of document.groups.values()) {
    tag = g.tagsAnyOf.find((t) => !workload.tags.includes(t));
    if (tag !== undefined) break;
  }
  if (tag === undefined) return;
  const withTag: TagMap = { ...tags, [workload.name]: [...(tags[workload.name] ?? []), { tag, reason: 'warm-up', by: 'tapwall', added: new Date().toISOString(), expiresAt: null }] };
  const memo = { last: effectiveMemo.last };
  let before: CompiledPolicy = previous;
  let round = 0;
  const step = () => {
    try {
      before = prepareNow(docs, before, doc, round % 2 === 0 ? withTag : tags, host, memo).compiled;
    } catch {
      return; // a warm-up that fails changes nothing: the real change runs cold
    }
    if (++round < WARM_ROUNDS) setImmediate(step);
  };
  step();
}

/** Texts arriving in slices, by document number, until their 'prepare'. */
const slices = new Map<number, string[]>();

parentPort!.on('message', (m: { t: string; doc?: DocumentRef & { sliced?: boolean }; tags?: TagMap; host?: string | null; groupsOf?: number | null; dropTables?: number[]; dropVersions?: number[]; dropDocs?: number[]; id?: number; slice?: string }) => {
  if (m.t === 'next') { send(); return; }
  if (m.t === 'text') {
    const list = slices.get(m.id!);
    if (list) list.push(m.slice!); else slices.set(m.id!, [m.slice!]);
    return;
  }
  if (m.t === 'installed') {
    for (const id of m.dropTables!) mainTables.delete(id);
    for (const v of m.dropVersions!) mainVersions.delete(v);
    for (const d of m.dropDocs!) mainDocs.delete(d);
    return;
  }
  if (m.t !== 'prepare') return;
  if (m.doc!.sliced) {
    m.doc!.text = (slices.get(m.doc!.id) ?? []).join('');
    slices.clear();
  }
  if (m.doc!.text === undefined && !docs.get(m.doc!.id)) {
    parentPort!.postMessage({ t: 'error', code: 'unknown-document', message: `document ${m.doc!.id} is not kept here` });
    return;
  }
  try {
    const before = previous;
    const newDocument = docs.get(m.doc!.id) === undefined;
    const prepared = prepareNow(docs, previous, m.doc!, m.tags!, m.host ?? null, effectiveMemo);
    previous = prepared.compiled;
    if (newDocument) {
      // Without its text (megabytes), which the held document makes unneeded.
      const ref: DocumentRef = { id: m.doc!.id, text: '', source: m.doc!.source }, tags = m.tags!, host = m.host ?? null;
      warmPending = () => warmTagPath(ref, tags, host);
    }
    parts = resultParts(m.doc!.id, prepared.document, prepared.compiled, prepared.compileMs, prepared.load, prepared.shadows ?? [], prepared.shadowCount ?? 0, before, m.groupsOf ?? null);
  } catch (e) {
    parts = [e instanceof PrepareRefused ? { t: 'refused', message: e.message, problems: e.problems } : { t: 'error', message: (e as Error).stack ?? String(e) }];
  }
  send();
});
