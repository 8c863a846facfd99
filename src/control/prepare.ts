/**
 * Preparing a policy for the data plane: a document (validated once) plus
 * the dynamic tags -> the effective policy -> compiled for this host's vNICs.
 *
 * Two preparers with one contract. InlinePreparer does it on the calling
 * thread (tests, `tapwall compile`, benchmarks that want the bare cost).
 * OffThreadPreparer (offThread.ts) does it in a worker thread and hands the
 * result over in slices, so that the thread forwarding frames never waits
 * for a parse, a validation or a compile.
 *
 * Documents are named by a number the caller gives each new text: a tag
 * change names the document in force and sends no text again.
 */
import { findShadowedRules } from '../policy/shadow.js';
import { policyCompile, type CompiledPolicy } from '../policy/compile.js';
import { policyFromData, policyParse } from '../policy/load.js';
import type { PolicyProblem } from '../policy/errors.js';
import { WorkloadsView, type Policy, type Workload } from '../policy/model.js';
import { tagsOf, type StoreState, type TagMap } from './store.js';

/** A document to prepare: its number, and its text the first time. */
export interface DocumentRef {
  id: number;
  text: string;
  source: string;
  /** From a store that assembles the document from keys: problems per key, and where each path came from. */
  keyProblems?: StoreState['policy']['keyProblems'];
  keyIndex?: KeyIndex;
  /** The text is the store's JSON of its assembled document (validate it as data: problems name keys). */
  assembled?: boolean;
}

/** Where each part of an assembled document came from (a store of many keys). */
export interface KeyIndex {
  /** Prefix every key is under. */
  prefix: string;
  /** Per section in document order: its key name and its rules' keys. */
  sections: Array<{ name: string; rules: string[] }>;
}

/** The store key a document path (like `sections[0].rules[2].to`) was read from, or null. */
export function keyOfPathIn(index: KeyIndex, path: string): string | null {
  const full = (k: string) => `${index.prefix}${k}`;
  let m = /^(workloads|groups|services)\.([^.[\]]+)/.exec(path);
  if (m) return full(`policy/${m[1]}/${m[2]}`);
  m = /^sections\[(\d+)\]\.rules\[(\d+)\]/.exec(path);
  if (m) { const k = index.sections[Number(m[1])]?.rules[Number(m[2])]; return k === undefined ? null : full(k); }
  m = /^sections\[(\d+)\]/.exec(path);
  if (m) { const s = index.sections[Number(m[1])]; return s ? full(`policy/sections/${s.name}`) : null; }
  if (/^(default|spoofguard)/.test(path)) return full('policy/settings');
  return null;
}

export interface Prepared {
  document: Policy;
  compiled: CompiledPolicy;
  compileMs: number;
  /**
   * When this preparation read the document's text (not held from an earlier one): how long loading and
   * validating it took, and the memory pages the process touched for the first time meanwhile.
   */
  load: DocumentLoad | null;
  /** The document's shadowed and partly shadowed rules (found once per document, where it is validated). */
  shadows?: PolicyProblem[];
  /** How many there are in all (shadows holds the first SHADOWS_KEPT). */
  shadowCount?: number;
}

export interface DocumentLoad { ms: number; freshPages: number }

/** At most this many findings travel with a result (their count always does). */
export const SHADOWS_KEPT = 200;
const shadowsOf = new WeakMap<Policy, { count: number; list: PolicyProblem[] }>();

/** The shadow analysis of a document, once (control/compiling thread: ~0.2 s at 10,000 rules). */
export function documentShadows(policy: Policy): { count: number; list: PolicyProblem[] } {
  let s = shadowsOf.get(policy);
  if (!s) {
    const all = findShadowedRules(policy);
    s = { count: all.length, list: all.slice(0, SHADOWS_KEPT) };
    shadowsOf.set(policy, s);
  }
  return s;
}

/** Refused: the document's errors (or a compile that failed), with nothing changed. */
export class PrepareRefused extends Error {
  constructor(message: string, readonly problems: PolicyProblem[]) {
    super(message);
  }
}

export interface Preparer {
  /** Validate `doc` (the first time its number is seen) and compile it with these tags for `host`. */
  prepare(doc: DocumentRef, tags: TagMap, host: string | null): Promise<Prepared>;
  /** The compiled policy now in force: what may be forgotten and what the next compile starts from. */
  installed(compiled: CompiledPolicy): void;
  /** Prepares in another thread than the one forwarding frames: the controller prepares the first policy with it too. */
  readonly offThread?: boolean;
  close(): Promise<void>;
}

/**
 * Validate a policy as a store holds it: its text, or (a store that
 * assembles it from keys) that text read as data, with every problem named
 * by the key it sits in, and a key that could not be read at all refusing
 * the whole of it. Returns the errors only; `policy` is null when there is any.
 */
export function documentCheck(doc: Pick<DocumentRef, 'text' | 'source' | 'keyProblems' | 'keyIndex' | 'assembled'>): { policy: Policy | null; problems: PolicyProblem[] } {
  let parsed: { policy: Policy | null; problems: PolicyProblem[] };
  if (doc.assembled) {
    let data: unknown;
    try {
      data = JSON.parse(doc.text);
    } catch (e) {
      return { policy: null, problems: [{ severity: 'error', code: 'syntax', file: doc.source, line: 1, column: 1, path: '(document)', message: (e as Error).message }] };
    }
    parsed = policyFromData(data as never, doc.source, undefined, { shadows: false });
  } else parsed = policyParse(doc.text, doc.source, { shadows: false });
  const index = doc.keyIndex;
  const problems = [
    ...(doc.keyProblems ?? []).map((k) => ({ severity: 'error' as const, code: 'bad-key', file: k.key, line: 1, column: 1, path: '(key)', message: k.message })),
    ...parsed.problems.filter((p) => p.severity === 'error').map((p) => (index ? { ...p, file: keyOfPathIn(index, p.path) ?? p.file } : p)),
  ];
  return { policy: problems.length > 0 ? null : parsed.policy, problems };
}

/** A workload's dynamic tags still in force at `now`. */
function liveTags(tags: TagMap, name: string, now: number): string[] {
  return (tagsOf(tags, name) ?? []).filter((t) => t.expiresAt === null || t.expiresAt > now).map((t) => t.tag);
}

/** The workload with its live dynamic tags added to its own (the same object when it has none). */
function withLiveTags(w: Workload, tags: TagMap, now: number): Workload {
  const extra = liveTags(tags, w.name, now);
  return extra.length === 0 ? w : { ...w, tags: [...new Set([...w.tags, ...extra])] };
}

/** The document with each workload's live dynamic tags added to its own (expired ones and unknown workloads left out). */
export function effectivePolicy(policy: Policy, tags: TagMap, now = Date.now()): Policy {
  const replaced = new Map<string, Workload>();
  for (const name of Object.keys(tags)) {
    const w = policy.workloads.get(name);
    if (!w) continue;
    const tagged = withLiveTags(w, tags, now);
    if (tagged !== w) replaced.set(name, tagged);
  }
  return { ...policy, workloads: new WorkloadsView(policy.workloads, replaced) };
}

/** The last effective policy made, to patch the next from: a tag change touches a few workloads, not all 10,000. */
export interface EffectiveMemo {
  document: Policy;
  /** Workloads with live dynamic tags -> those tags, joined. */
  live: Map<string, string>;
  effective: Policy;
}

/**
 * effectivePolicy, made by patching the last one when the document is the
 * same: only the workloads whose live tags differ get new objects, and the
 * answer says which (`changed`, for the compiler's incremental path); a new
 * document is made whole (changed: null). Returns the memo for next time.
 */
export function effectivePolicyFrom(memo: EffectiveMemo | null, policy: Policy, tags: TagMap, now = Date.now()): { memo: EffectiveMemo; changed: Set<string> | null } {
  const live = new Map<string, string>();
  for (const name of Object.keys(tags)) {
    if (!policy.workloads.has(name)) continue;
    const key = liveTags(tags, name, now).join('\n');
    if (key !== '') live.set(name, key);
  }
  if (memo === null || memo.document !== policy) return { memo: { document: policy, live, effective: effectivePolicy(policy, tags, now) }, changed: null };
  const changed = new Set<string>();
  for (const [name, key] of live) if (memo.live.get(name) !== key) changed.add(name);
  for (const name of memo.live.keys()) if (!live.has(name)) changed.add(name);
  if (changed.size === 0) return { memo: { ...memo, live }, changed };
  // The tagged workloads as a view over the document's: copying the few replaced, not the whole inventory.
  const replaced = new Map(memo.effective.workloads instanceof WorkloadsView ? memo.effective.workloads.changed : []);
  for (const name of changed) {
    const w = withLiveTags(policy.workloads.get(name)!, tags, now);
    if (w === policy.workloads.get(name)) replaced.delete(name); else replaced.set(name, w);
  }
  const workloads = new WorkloadsView(policy.workloads, replaced);
  return { memo: { document: policy, live, effective: { ...memo.effective, workloads } }, changed };
}

const localOf = new WeakMap<Policy, Map<string | null, Set<string> | null>>();

/** This host's workloads in a policy (null, meaning all of them, when no host is set); kept per document. */
export function localWorkloads(policy: Policy, host: string | null): Set<string> | null {
  if (host === null) return null;
  let byHost = localOf.get(policy);
  if (!byHost) localOf.set(policy, (byHost = new Map()));
  let out = byHost.get(host);
  if (out === undefined) {
    out = new Set<string>();
    for (const w of policy.workloads.values()) if (w.host === host) out.add(w.name);
    byHost.set(host, out);
  }
  return out;
}

/** Documents by number, the newest few kept (the one in force and one on its way). */
export class DocumentCache {
  private readonly docs = new Map<number, Policy>();
  get(id: number): Policy | undefined { return this.docs.get(id); }
  set(id: number, policy: Policy): void {
    this.docs.set(id, policy);
    while (this.docs.size > 3) this.docs.delete(this.docs.keys().next().value as number);
  }
}

/** Everything on the calling thread. */
export class InlinePreparer implements Preparer {
  private readonly docs = new DocumentCache();
  private previous: CompiledPolicy | null = null;
  private readonly memo: { last: EffectiveMemo | null } = { last: null };

  async prepare(doc: DocumentRef, tags: TagMap, host: string | null): Promise<Prepared> {
    return prepareNow(this.docs, this.previous, doc, tags, host, this.memo);
  }

  installed(compiled: CompiledPolicy): void {
    this.previous = compiled;
  }

  async close(): Promise<void> {}
}

/** One preparation, synchronously (the inline preparer and the worker both run it). */
export function prepareNow(
  docs: DocumentCache, previous: CompiledPolicy | null, doc: DocumentRef, tags: TagMap, host: string | null,
  memo: { last: EffectiveMemo | null } = { last: null },
): Prepared {
  let document = docs.get(doc.id);
  let load: DocumentLoad | null = null;
  if (!document) {
    const faults = process.resourceUsage().minorPageFault, t = performance.now();
    const { policy, problems } = documentCheck(doc);
    if (!policy) throw new PrepareRefused(`the policy is invalid (${problems.length} errors)`, problems);
    load = { ms: performance.now() - t, freshPages: process.resourceUsage().minorPageFault - faults };
    document = policy;
    docs.set(doc.id, document);
  }
  const t0 = performance.now();
  const before = memo.last;
  const { memo: next, changed } = effectivePolicyFrom(before, document, tags);
  memo.last = next;
  // The compiler may skip scanning every workload only when it compiled from the effective policy this one patched.
  const hint = changed !== null && before !== null && previous !== null && previous.policy === before.effective ? changed : null;
  const compiled = policyCompile(next.effective, previous, { workloads: localWorkloads(document, host), changed: hint });
  const compileMs = performance.now() - t0;
  const shadows = documentShadows(document);
  return { document, compiled, compileMs, load, shadows: shadows.list, shadowCount: shadows.count };
}
