/**
 * OffThreadPreparer: validation and compilation in a worker thread
 * (compileWorker.ts), so that the thread forwarding frames never waits for a
 * parse, a validation or a compile.
 *
 * Design
 *   - One worker, one preparation at a time (the controller takes changes in
 *     turn). The worker keeps the documents it validated and the last policy
 *     it compiled, so a tag change sends only the tags and compiles only what
 *     they change.
 *   - The result comes back in parts, and this side asks for each part after
 *     taking the previous one: every part is one short turn of the event loop
 *     (a few hundred rules or workloads, a group's next 4,000 CIDRs, one
 *     table), and frames are forwarded between turns. The compiled tables are
 *     typed arrays in SharedArrayBuffers: handing them over copies nothing.
 *   - A new document goes against one this side holds (the worker still
 *     has it too): every workload, group and rule equal to one of that
 *     document's goes as its index, and this side reuses its own object. A
 *     reload that edits a few rules hands over those few; the forwarding
 *     thread does not build and then collect a copy of the whole document
 *     (collector pauses of 20-30 ms at 10,000 rules).
 *   - This side keeps a mirror of what it was sent (documents by number,
 *     tables by number, resolved groups by version); the worker sends only
 *     what the mirror lacks. After a swap, the mirror drops what the policy in
 *     force does not use (but the newest document; group versions once a few
 *     dozen are stale) and tells the worker what it dropped, which it sends
 *     again when it is needed. Group versions come as those that differ from
 *     the last result this side took, which it names (a tag change: a few of
 *     2,000), and the groups are a view over that result's (GroupsView).
 *   - A rule that only moved (one inserted or removed above it) is the
 *     rule held: where rules stand comes with the document (RulePlaces, two
 *     typed arrays), not with each rule. A reload that inserts one rule
 *     above 100,000 makes one rule here, where a copy of each at its new
 *     place was 19 MB for the collector to promote.
 *   - What a new document's parts make (new rules, workloads, groups) is
 *     kept for as long as it is in force, so the young generation is
 *     collected once a part's worth has come (in a turn of its own, before
 *     the next part is asked for): each collection copies and promotes one
 *     part's worth. Left to V8, one collection promoted a whole reload's
 *     worth at once, after it: 2 MB at 10,000 rules (7-9 ms here, where a
 *     first touch of a page costs 13 µs). Parts that name held items make
 *     nothing, and are not followed by a collection.
 *   - The policy is built here from the mirror as a CompiledPolicy like the
 *     inline compiler's, and swapped in by the controller in one step. Group
 *     addresses are found on first use (explanations, dumps), not handed over.
 *   - A worker that fails (an exception, an exit) fails the preparation in
 *     progress: the policy in force stays. The next preparation starts a new
 *     worker with an empty mirror.
 */
import type { PolicyProblem } from '../policy/errors.js';
import { Worker } from 'node:worker_threads';
import { groupsPatched, SegmentCache, ResolvedGroup, type CompiledPolicy, type FamilyTable, type PointTables } from '../policy/compile.js';
import type { Prefix } from '../policy/addresses.js';
import type { ServiceAtom } from '../policy/services.js';
import { WorkloadsView, type Group, type Policy, type Rule, type Workload } from '../policy/model.js';
import { parsePrefix, workloadPrefixes } from '../policy/addresses.js';
import { PrepareRefused, type DocumentLoad, type DocumentRef, type Prepared, type Preparer } from './prepare.js';
import type { TagMap } from './store.js';
import { placement } from '../util/placement.js';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let youngGc: ((o: { type: 'minor' }) => void) | null = null;
/**
 * Collect this thread's young generation now (a scavenge). V8's collector
 * function, from a context of its own, without --expose-gc on the command
 * line (the flag only gives new contexts a `gc`).
 */
function youngCollect(): void {
  if (youngGc === null) {
    setFlagsFromString('--expose-gc');
    youngGc = runInNewContext('gc') as (o: { type: 'minor' }) => void;
  }
  youngGc({ type: 'minor' });
}

/**
 * A held document that a new one's parts name by index: its items in
 * document order, listed only when an index first asks for them (a reload
 * whose maps are all unchanged needs no list at all).
 */
class BaseDocument {
  private w: Workload[] | null = null;
  private g: Group[] | null = null;
  private r: Rule[] | null = null;
  constructor(readonly doc: Policy) {}
  get workloads(): Workload[] { return (this.w ??= [...this.doc.workloads.values()]); }
  get groups(): Group[] { return (this.g ??= [...this.doc.groups.values()]); }
  get rules(): Rule[] { return (this.r ??= rulesOf(this.doc)); }
}

/** Characters of a document's text per message to the worker. */
const TEXT_SLICE = 256 * 1024;

interface Pending {
  resolve: (p: Prepared) => void;
  reject: (e: Error) => void;
  /** The document being assembled from parts, until the final part (its workloads map filled in as they come). */
  doc: (Policy & { workloads: Map<string, Workload> }) | null;
  /** The document the parts name by index (one this side holds). */
  base: BaseDocument | null;
  docId: number;
  /**
   * The new document's rules in precedence order, filled in as they arrive
   * (sections come in order): made at their full length with the document,
   * as each section's list is with the section. Grown by push instead, a
   * list of 100,000 was copied into fresh memory at each growth (2-5 ms a
   * time where a page costs 13 µs on first touch).
   */
  rules: Rule[];
  /** Rules filled in so far, of the document and of its last section. */
  filled: number;
  filledInSection: number;
  /** Where each of them stood in the base document (CompiledPolicy.ruleFrom). */
  ruleFrom: CompiledPolicy['ruleFrom'];
  overrides: Workload[];
  /** Workloads, groups and rules taken whole since the young generation was last collected. */
  made: number;
  retry: () => void;
}

/**
 * Whole items (workloads, groups, rules: a few hundred bytes each) taken
 * before the young generation is collected: a part of new ones is about 300;
 * a part of items this side holds makes none, and its collection would be
 * a scavenge's fixed cost for nothing (1-2 ms beside a 200 MB old generation).
 */
const COLLECT_AFTER = 128;

export class OffThreadPreparer implements Preparer {
  private worker: Worker | null = null;
  private pending: Pending | null = null;
  private readonly docs = new Map<number, Policy>();
  private readonly tables = new Map<number, FamilyTable>();
  private readonly groups = new Map<number, ResolvedGroup>();
  /** Per document held: its rule actions and flags and its shadow findings (sent once with it). */
  private readonly documentFacts = new Map<number, DocumentFacts>();
  /** The groups of the last result taken, by its number: the next result names only what differs. */
  private lastGroups: { id: number; groups: CompiledPolicy['groups'] } | null = null;
  /** Versions and tables of each compiled policy this side built, for pruning after a swap. */
  private readonly uses = new WeakMap<CompiledPolicy, { tables: number[]; docId: number }>();
  /** Parts taken, and the longest time one took (a benchmark reads it). */
  parts = 0;
  longestPartMs = 0;

  private start(): Worker {
    // Born on the forwarding thread's CPU (a thread inherits its maker's): it moves off at its first step.
    const w = new Worker(new URL('./compileWorker.js', import.meta.url), {
      workerData: { cpus: placement()?.others ?? [] },
      resourceLimits: { maxYoungGenerationSizeMb: COMPILE_YOUNG_MB },
    });
    // Only the worker in use speaks for the preparation in progress: one let go (a part it sent could not be
    // placed) may still deliver what it posted before it ended, which must not reach the next preparation.
    w.on('message', (m: Part) => { if (this.worker === w) this.onPart(m); });
    const fail = (e: Error) => {
      this.worker = null;
      this.forget();
      const p = this.pending;
      this.pending = null;
      p?.reject(e);
    };
    w.on('error', (e) => { if (this.worker === w) fail(e); });
    w.on('exit', (code) => { if (this.worker === w) fail(new Error(`the compiling thread exited (code ${code})`)); });
    w.unref();
    return w;
  }

  readonly offThread = true;

  /** Drop the mirror: a new worker starts with nothing held here. */
  private forget(): void {
    this.docs.clear(); this.tables.clear(); this.groups.clear(); this.documentFacts.clear();
    this.lastGroups = null;
  }

  prepare(doc: DocumentRef, tags: TagMap, host: string | null): Promise<Prepared> {
    if (this.pending) return Promise.reject(new Error('a preparation is already in progress'));
    this.worker ??= this.start();
    // Held while a preparation is under way (a process waiting for it must not exit), let go after.
    const w = this.worker;
    w.ref();
    const done = () => { if (this.worker === w) w.unref(); };
    return new Promise<Prepared>((resolve, reject) => {
      this.pending = {
        resolve: (p) => { done(); resolve(p); }, reject: (e) => { done(); reject(e); },
        doc: null, base: null, docId: doc.id, rules: [], filled: 0, filledInSection: 0, ruleFrom: null, overrides: [], made: 0, retry: () => this.send(doc, tags, host, true),
      };
      // A document the worker handed over already goes without its text (megabytes at 10,000 rules);
      // should the worker have let it go, it says so and gets the text.
      this.send(doc, tags, host, !this.docs.has(doc.id));
    });
  }

  /**
   * Ask the worker to prepare. A long text goes first in slices, one per
   * turn of the event loop: copying 2 MB into one message held the
   * forwarding thread for 15-20 ms here.
   */
  private send(doc: DocumentRef, tags: TagMap, host: string | null, withText: boolean): void {
    const w = this.worker!;
    const groupsOf = this.lastGroups?.id ?? null;
    if (!withText) { w.postMessage({ t: 'prepare', doc: { ...doc, text: undefined }, tags, host, groupsOf }); return; }
    if (doc.text.length <= TEXT_SLICE) { w.postMessage({ t: 'prepare', doc, tags, host, groupsOf }); return; }
    let at = 0;
    const next = () => {
      if (this.worker !== w) return; // the worker failed meanwhile: the preparation has been refused
      if (at < doc.text.length) {
        w.postMessage({ t: 'text', id: doc.id, slice: doc.text.slice(at, at + TEXT_SLICE) });
        at += TEXT_SLICE;
        setImmediate(next);
      } else w.postMessage({ t: 'prepare', doc: { ...doc, text: undefined, sliced: true }, tags, host, groupsOf });
    };
    next();
  }

  installed(compiled: CompiledPolicy): void {
    const use = this.uses.get(compiled);
    if (!use) return;
    const tables = new Set(use.tables);
    const dropTables: number[] = [], dropVersions: number[] = [], dropDocs: number[] = [];
    for (const id of this.tables.keys()) if (!tables.has(id)) dropTables.push(id);
    // Group versions are small: pruned once those not in force are many, not at every tag change
    // (2,000 groups read to drop the one or two that a tag change replaced).
    if (this.groups.size > compiled.groups.size + VERSIONS_SLACK) {
      const versions = new Set<number>();
      for (const g of compiled.groups.values()) versions.add(g.version);
      for (const v of this.groups.keys()) if (!versions.has(v)) dropVersions.push(v);
    }
    // The document in force and the newest one (a tag change names the first, the next PUT may follow the second).
    const newest = Math.max(...this.docs.keys());
    for (const id of this.docs.keys()) if (id !== use.docId && id !== newest) dropDocs.push(id);
    for (const id of dropTables) this.tables.delete(id);
    for (const v of dropVersions) this.groups.delete(v);
    for (const id of dropDocs) { this.docs.delete(id); this.documentFacts.delete(id); }
    // What this side dropped: the worker sends it again if a later result needs it.
    if (dropTables.length + dropVersions.length + dropDocs.length > 0) this.worker?.postMessage({ t: 'installed', dropTables, dropVersions, dropDocs });
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    await w?.terminate();
  }

  private onPart(m: Part): void {
    const p = this.pending;
    if (!p) return;
    const t0 = performance.now();
    try {
      if (m.t === 'refused') { this.pending = null; p.reject(new PrepareRefused(m.message, m.problems)); return; }
      if (m.t === 'error' && m.code === 'unknown-document') { p.retry(); return; }
      if (m.t === 'error') { this.pending = null; p.reject(new Error(m.message)); return; }
      for (const part of m.t === 'batch' ? m.list : [m]) {
        this.take(p, part);
        if (part.t === 'final') {
          this.pending = null;
          p.resolve(this.assemble(p, part));
          return;
        }
      }
      const w = this.worker!;
      if (p.doc === null || p.made < COLLECT_AFTER) w.postMessage({ t: 'next' });
      else {
        // A new document: what its parts made (new rules, workloads, groups) lives as long as the
        // document, so it is collected now, a part's worth, in a turn of its own (two turns on: frames
        // are read between), and the next part asked for after it (a part that arrived during the
        // collection would be taken in the same turn).
        p.made = 0;
        setImmediate(() => setImmediate(() => {
          if (this.worker !== w || this.pending !== p) return;
          youngCollect();
          w.postMessage({ t: 'next' });
        }));
      }
    } catch (e) {
      // This side and the worker no longer agree on what this side holds (a part out of place, an index
      // to nothing held): both start again with nothing, and the policy in force stays.
      const w = this.worker;
      this.worker = null;
      this.forget();
      void w?.terminate();
      this.pending = null;
      p.reject(e as Error);
    } finally {
      this.parts++;
      this.longestPartMs = Math.max(this.longestPartMs, performance.now() - t0);
    }
  }

  private take(p: Pending, m: Part): void {
    switch (m.t) {
      case 'doc': {
        const base = m.base === null ? undefined : this.docs.get(m.base);
        if (base === undefined && m.base !== null) throw new Error(`document ${m.base} is not held here`);
        p.base = base ? new BaseDocument(base) : null;
        p.ruleFrom = base && m.ruleFrom ? { sections: base.sections, from: m.ruleFrom } : null;
        p.doc = { source: m.source, default: m.default, spoofguard: m.spoofguard, workloads: new Map(), groups: new Map(), services: new Map(m.services.map((s) => [s.name, s])), sections: [], places: m.places };
        p.rules = new Array<Rule>(m.size);
        this.docs.set(m.id, p.doc);
        break;
      }
      // `same`: the base's whole map (maps are not changed once a document is assembled).
      case 'workloads': if (m.same) p.doc!.workloads = p.base!.doc.workloads as Map<string, Workload>; else for (const x of m.list) { const w = typeof x === 'number' ? p.base!.workloads[x] : (p.made++, x); p.doc!.workloads.set(w.name, w); } break;
      case 'groups': if (m.same) p.doc!.groups = p.base!.doc.groups; else for (const x of m.list) { const g = typeof x === 'number' ? p.base!.groups[x] : (p.made++, x); p.doc!.groups.set(g.name, g); } break;
      case 'cidrs': cidrsAsText(p.doc!.groups.get(m.group)!, m.text); break;
      case 'section': p.doc!.sections.push({ name: m.name, rules: new Array<Rule>(m.size) }); p.filledInSection = 0; break;
      case 'rules': {
        const sections = p.doc!.sections;
        const section = m.index === sections.length - 1 ? sections[m.index].rules : null;
        if (section === null || p.filledInSection + m.held.length > section.length || p.filled + m.held.length > p.rules.length) throw new Error(`the compiling thread sent rules out of place (section ${m.index})`);
        rulesFill(section, p.filledInSection, p.rules, p.filled, m.held, m.whole, m.held.length === m.whole.length ? null : p.base!.rules);
        p.filledInSection += m.held.length;
        p.filled += m.held.length;
        p.made += m.whole.length;
        break;
      }
      case 'effective': for (const w of m.list) p.overrides.push(w); break;
      case 'resolved': {
        const doc = this.docs.get(p.docId)!;
        for (const g of m.list) {
          if ('sameAs' in g) {
            // Resolves as a group this side holds (a new document that left it as it was).
            const held = this.groups.get(g.sameAs);
            if (!held) throw new Error(`group version ${g.sameAs} is not held here`);
            this.groups.set(g.version, held);
            continue;
          }
          const members = new Set(g.members);
          const prefixes = () => {
            const out = groupPrefixes(doc, g.name, new Set());
            for (const w of members) for (const x of workloadPrefixes(doc.workloads.get(w) as Workload)) out.push(x);
            return out;
          };
          this.groups.set(g.version, new ResolvedGroup(doc.groups.get(g.name) as Group, new Set(g.direct), members, prefixes, g.signature, g.version));
        }
        break;
      }
      case 'table': this.tables.set(m.table.id, tableFrom(m.table)); break;
      default: break;
    }
  }

  private assemble(p: Pending, m: FinalPart): Prepared {
    const document = this.docs.get(m.docId);
    if (!document) throw new Error(`document ${m.docId} was not handed over`);
    // A document handed over just now: its rule list was made as its rules came (not in the swap's turn).
    if (p.doc === document) {
      // No section overfilled (take checks each part) and as many rules as the sections hold: every one filled.
      let held = 0;
      for (const s of document.sections) held += s.rules.length;
      if (p.filled !== p.rules.length || held !== p.rules.length) throw new Error(`the compiling thread sent ${p.filled} of the document's ${p.rules.length} rules (its sections hold ${held})`);
      ruleLists.set(document, p.rules);
    }
    // The tagged workloads over the document's (a few entries, not a copy of the inventory).
    const policy: Policy = p.overrides.length === 0 ? document : { ...document, workloads: new WorkloadsView(document.workloads, new Map(p.overrides.map((w) => [w.name, w]))) };
    const taken: Array<[string, ResolvedGroup]> = m.groups.versions.map(([name, version]) => {
      const g = this.groups.get(version);
      if (g === undefined) throw new Error(`group version ${version} is not held here`);
      return [name, g];
    });
    let groups: CompiledPolicy['groups'];
    if (m.groups.base === null) groups = new Map(taken);
    else if (this.lastGroups !== null && this.lastGroups.id === m.groups.base) groups = groupsPatched(this.lastGroups.groups, taken);
    else throw new Error(`the groups of result ${m.groups.base} are not held here`);
    this.lastGroups = { id: m.id, groups };
    if (m.document !== null) this.documentFacts.set(m.docId, m.document);
    const facts = this.documentFacts.get(m.docId);
    if (facts === undefined) throw new Error(`the rule actions of document ${m.docId} were not handed over`);
    const table = (id: number) => this.tables.get(id)!;
    const scopes: PointTables[] = m.scopes.map((s) => ({ v4: s.v4.map(table), v6: s.v6.map(table), r4: s.r4.map(table), r6: s.r6.map(table), ether: s.ether, rules: s.rules }));
    const points: CompiledPolicy['points'] = new Map();
    m.nics.forEach((nic, i) => {
      const tables = scopes[m.scopeOf[i]], workload = m.workloads[i];
      points.set(nic, { egress: { workload, nic, direction: 'egress', tables }, ingress: { workload, nic, direction: 'ingress', tables } });
    });
    const compiled: CompiledPolicy = {
      policy, rules: rulesOf(document), ruleAction: facts.ruleAction, ruleFlags: facts.ruleFlags,
      defaultAction: document.default, groups, points, stats: m.stats, segmentsBySignature: new SegmentCache(),
      ruleFrom: p.doc === document ? p.ruleFrom : null,
    };
    this.uses.set(compiled, { tables: m.scopes.flatMap((s) => [...s.v4, ...s.v6, ...s.r4, ...s.r6]), docId: m.docId });
    return { document, compiled, compileMs: m.compileMs, load: m.load, shadows: facts.shadows, shadowCount: facts.shadowCount };
  }
}

/**
 * A part's rules written into their section's list from `at` and the
 * document's from `allAt`: each held[j] is an index into `base`, or -1 for
 * the next of `whole`.
 */
function rulesFill(section: Rule[], at: number, all: Rule[], allAt: number, held: Int32Array, whole: Rule[], base: Rule[] | null): void {
  let w = 0;
  for (let j = 0; j < held.length; j++) {
    const k = held[j];
    const r = k >= 0 ? base![k] : whole[w++];
    section[at + j] = r;
    all[allAt + j] = r;
  }
}

const ruleLists = new WeakMap<Policy, Rule[]>();

/** A document's rules in precedence order, made once per document (10,000 rules: a millisecond a tag change need not pay). */
function rulesOf(doc: Policy): Rule[] {
  let rules = ruleLists.get(doc);
  if (!rules) {
    // A loop, not flatMap: V8's flatMap copies element by element through the generic path (40 ms at 100,000 rules).
    rules = [];
    for (const s of doc.sections) for (const r of s.rules) rules.push(r);
    ruleLists.set(doc, rules);
  }
  return rules;
}

/**
 * A large group's CIDRs kept as the text they came in (one line each, a few
 * parts), made into prefixes the first time something reads `cidrs` (an
 * explanation, a dump). At a million CIDRs the objects were 150 MB of the
 * forwarding thread's heap, which its collector walked; the text is 15 MB in
 * a few strings.
 */
function cidrsAsText(g: Group, text: string): void {
  let chunks = cidrTexts.get(g);
  if (chunks === undefined) {
    const held = g.cidrs;
    cidrTexts.set(g, (chunks = []));
    Object.defineProperty(g, 'cidrs', {
      enumerable: true,
      configurable: true,
      get(): Prefix[] {
        const list = held.slice();
        for (const part of chunks!) for (const line of part.split('\n')) {
          const prefix = parsePrefix(line);
          if (prefix === null) throw new Error(`group ${g.name}: the compiling thread sent '${line}' as a CIDR`);
          list.push(prefix);
        }
        Object.defineProperty(g, 'cidrs', { value: list, enumerable: true, configurable: true, writable: true });
        cidrTexts.delete(g);
        return list;
      },
    });
  }
  chunks.push(text);
}
const cidrTexts = new WeakMap<Group, string[]>();

/** A group's addresses from the document (for a group handed over without them). */
function groupPrefixes(doc: Policy, name: string, seen: Set<string>): Prefix[] {
  const g = doc.groups.get(name);
  if (!g || seen.has(name)) return [];
  seen.add(name);
  const out: Prefix[] = g.cidrs.slice();
  for (const sub of g.groups) for (const p of groupPrefixes(doc, sub, seen)) out.push(p);
  return out;
}

interface SerializedTable {
  id: number;
  trie: FamilyTable['trie'];
  classes: FamilyTable['classes'];
  atomRule: Int32Array;
  entries: number;
}

function tableFrom(s: SerializedTable): FamilyTable {
  // The entries' descriptions (for dumps) stay with the compiler; the count is what is read here.
  return { trie: s.trie, classes: s.classes, atomRule: s.atomRule, entries: s.entries, atoms: null };
}

/** What a document compiles to whatever the tags: sent once with the document. */
interface DocumentFacts {
  ruleAction: Uint8Array;
  ruleFlags: Uint8Array;
  shadows: PolicyProblem[];
  shadowCount: number;
}

/**
 * The compiling thread's young generation, at most (V8's default grows to
 * 48 MB here). A document's load makes tens of megabytes of short-lived
 * objects, and every semi-space the young generation grows into is memory
 * touched for the first time, 12-13 µs a page on this VM at its slowest: a
 * daemon's first load of 10,000 rules touched 14,300 pages with the default
 * and 7,900-8,800 with this, and took 191 ms against 221 (medians of five
 * fresh processes each, interleaved); compiling took as long or less (every
 * vNIC at 10,000 rules 467 ms against 489; load and compile of 100,000 rules
 * 4.9 s against 5.3, of 1,000,000 group addresses 2.0 s against 2.0). At
 * 3 MB the compile was 5-10 % slower. The old generation keeps its default
 * limit.
 */
export const COMPILE_YOUNG_MB = 12;

/** Held group versions beyond those in force before they are pruned (a stale one can hold thousands of member names). */
const VERSIONS_SLACK = 32;

interface FinalPart {
  t: 'final';
  /** This result's number (the next preparation names it as the groups this side holds). */
  id: number;
  docId: number;
  compileMs: number;
  load: DocumentLoad | null;
  /** The document's facts when this side did not have the document, else null. */
  document: DocumentFacts | null;
  scopes: Array<{ v4: number[]; v6: number[]; r4: number[]; r6: number[]; ether: Int32Array; rules: Int32Array }>;
  nics: string[];
  workloads: string[];
  scopeOf: number[];
  /** Group versions: all of them (base null), or those that differ from result `base`'s groups. */
  groups: { base: number | null; versions: Array<[string, number]> };
  stats: CompiledPolicy['stats'];
}

type Part =
  | { t: 'refused'; message: string; problems: PrepareRefused['problems'] }
  | { t: 'error'; message: string; code?: string }
  | { t: 'doc'; id: number; base: number | null; source: string; default: Policy['default']; spoofguard: boolean; services: Array<{ name: string; atoms: ServiceAtom[]; specs: string[] }>; places: Policy['places']; ruleFrom: Int32Array | null; size: number }
  // A number: the item at that index of the base document (see compileWorker's documentParts).
  | { t: 'workloads'; list: Array<Workload | number>; same?: boolean }
  | { t: 'groups'; list: Array<Group | number>; same?: boolean }
  | { t: 'cidrs'; group: string; text: string }
  | { t: 'section'; name: string; size: number }
  // Each rule as the base document's index, or -1: the next of `whole`.
  | { t: 'rules'; index: number; held: Int32Array; whole: Rule[] }
  | { t: 'effective'; list: Workload[] }
  | { t: 'resolved'; list: Array<{ name: string; version: number; signature: string; direct: string[]; members: string[] } | { name: string; version: number; sameAs: number }> }
  | { t: 'table'; table: SerializedTable }
  | FinalPart
  | { t: 'batch'; list: Part[] };
