/**
 * The controller: turns what the store holds (the policy document and the
 * dynamic tags) into the compiled policy the data plane runs, and keeps the
 * record of every change.
 *
 * One path for every change
 *   policy text + dynamic tags -> validate -> effective policy (each
 *   workload's tags are its static ones plus its live dynamic ones) ->
 *   compile off to the side, reusing the previous tries of every vNIC whose
 *   rules did not change -> one synchronous swap in the data plane. A change
 *   that fails validation or compilation leaves the running policy as it was
 *   and is recorded (lastError, applyFailures, the log).
 *   Writes through the API go to the store first (compare-and-set on the
 *   revision the caller read), and are applied when the store confirms them;
 *   changes from outside (the watched file) take the same path.
 *
 * Tags with a time-to-live are removed by one timer set for the earliest
 * expiry; the policy follows like for any other tag change.
 *
 * Every change is appended to the audit log (JSON lines): what, who, why.
 */
import { appendFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { policyFromData, policyParse, NAME_RE } from '../policy/load.js';
import { policyCompile, type CompiledPolicy } from '../policy/compile.js';
import type { PolicyProblem } from '../policy/errors.js';
import type { Policy, Workload } from '../policy/model.js';
import { tagsOf, type DynamicTag, type PolicyStore, type StoreState, type TagMap } from './store.js';

/**
 * What the controller drives: the data plane (or, in benchmarks, a decider
 * alone). setPolicy also makes the vNIC ports the ones the compiled policy
 * has points for: a workload added, removed or moved is attached or
 * detached without a restart.
 */
export interface PolicyTarget {
  setPolicy(compiled: CompiledPolicy): void;
}

/** A refused request: an HTTP status, a stable code, a message, and policy problems when there are any. */
export class ControlError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly problems: PolicyProblem[] = []) {
    super(message);
  }
}

export interface ApplyRecord {
  generation: number;
  revision: number;
  compileMs: number;
  swapMs: number;
  reused: number;
  rules: number;
  at: string;
}

export interface TagChange {
  add?: string[];
  remove?: string[];
  reason: string;
  /** Seconds; null or undefined: until removed. */
  ttlSeconds?: number | null;
  by: string;
  /** Tags revision the caller read, or null to apply to whatever is current. */
  expectRevision?: number | null;
}

export class Controller {
  /** The validated document (static tags only), its text and store revision. */
  private document!: Policy;
  private documentText = '';
  private documentRevision = 0;
  private tags: TagMap = {};
  private tagsRevision = 0;
  private compiled!: CompiledPolicy;
  generation = 0;
  applyFailures = 0;
  lastApply: ApplyRecord | null = null;
  lastSuccessAt: number | null = null;
  lastFailureAt: number | null = null;
  lastError: { at: string; source: string; problems: PolicyProblem[]; message: string } | null = null;
  private rejectedText: string | null = null;
  /** True while this controller writes to the store: it applies its own writes, the watch need not. */
  private writing = false;
  private ttlTimer: NodeJS.Timeout | null = null;
  private unwatch: (() => void) | null = null;
  readonly started = Date.now();
  /** Who changes from the store are attributed to in the audit log. */
  storeName = 'file';

  constructor(
    private readonly store: PolicyStore,
    private readonly target: PolicyTarget,
    private readonly opts: {
      log?: Logger;
      auditPath?: string | null;
      /** This host's name: only workloads whose `host` is it get vNICs here (null: every workload). */
      host?: string | null;
      /** Called after every successful apply (a cluster store reports what this host enforces). */
      onApplied?: (rec: ApplyRecord, vnics: string[]) => void;
    } = {},
  ) {}

  /** Load what the store holds and apply it; throws ControlError when the stored policy is invalid. */
  async start(): Promise<void> {
    const state = await this.store.read();
    const policy = this.validate(state.policy.text, state.policy.source, state.policy);
    this.tags = this.pruneTags(state.tags.value, policy);
    this.tagsRevision = state.tags.revision;
    this.install(policy, state.policy.text, state.policy.revision, 'start');
    this.scheduleExpiry();
    this.unwatch = this.store.watch((key, s) => this.onStoreChange(key, s));
  }

  stop(): void {
    this.unwatch?.();
    if (this.ttlTimer) clearTimeout(this.ttlTimer);
  }

  get policy(): CompiledPolicy { return this.compiled; }
  get revision(): { policy: number; tags: number } { return { policy: this.documentRevision, tags: this.tagsRevision }; }
  get policyText(): string { return this.documentText; }
  get dynamicTags(): TagMap { return this.tags; }

  /**
   * Validate a policy text (or, from a store that assembles it from keys, its
   * data: then every problem names the key it sits in, and a key that could
   * not be read at all refuses the whole change).
   */
  private validate(text: string, source: string, from?: StoreState['policy']): Policy {
    const { policy, problems } = storedPolicyCheck(text, source, from);
    if (!policy) throw new ControlError(400, 'invalid-policy', `the policy is invalid (${problems.length} errors)`, problems);
    return policy;
  }

  /** Drop dynamic tags of workloads the policy no longer has, and expired ones. */
  private pruneTags(tags: TagMap, policy: Policy): TagMap {
    const now = Date.now();
    const out: TagMap = {};
    for (const [w, list] of Object.entries(tags)) {
      if (!policy.workloads.has(w)) continue;
      const live = list.filter((t) => t.expiresAt === null || t.expiresAt > now);
      if (live.length > 0) out[w] = live;
    }
    return out;
  }

  /** The document with each workload's dynamic tags added to its own. */
  private effective(policy: Policy, tags: TagMap): Policy {
    const workloads = new Map<string, Workload>();
    for (const [name, w] of policy.workloads) {
      const extra = tagsOf(tags, name)?.map((t) => t.tag) ?? [];
      workloads.set(name, extra.length === 0 ? w : { ...w, tags: [...new Set([...w.tags, ...extra])] });
    }
    return { ...policy, workloads };
  }

  /** This host's workloads in a policy (all of them when no host is set). */
  localWorkloads(policy: Policy): Set<string> | null {
    const host = this.opts.host ?? null;
    if (host === null) return null;
    const out = new Set<string>();
    for (const w of policy.workloads.values()) if (w.host === host) out.add(w.name);
    return out;
  }

  /** The effective policy compiled for this host's vNICs, groups resolved over every workload. */
  private compile(policy: Policy, tags: TagMap): CompiledPolicy {
    return policyCompile(this.effective(policy, tags), this.compiled ?? null, { workloads: this.localWorkloads(policy) });
  }

  /** Compile and swap; the data plane sees the old policy or the new one, nothing between. */
  private install(policy: Policy, text: string, revision: number, source: string, precompiled?: { compiled: CompiledPolicy; compileMs: number }): ApplyRecord {
    const t0 = performance.now();
    const compiled = precompiled?.compiled ?? this.compile(policy, this.tags);
    const t1 = performance.now();
    const compileMs = precompiled?.compileMs ?? t1 - t0;
    this.target.setPolicy(compiled);
    const t2 = performance.now();
    this.document = policy;
    this.documentText = text;
    this.documentRevision = revision;
    this.compiled = compiled;
    this.generation++;
    this.lastSuccessAt = Date.now();
    this.lastApply = {
      generation: this.generation, revision, compileMs, swapMs: t2 - t1,
      reused: compiled.stats.reused, rules: compiled.stats.rules, at: new Date().toISOString(),
    };
    this.opts.log?.info({ source, ...this.lastApply }, 'policy applied');
    this.opts.onApplied?.(this.lastApply, [...compiled.points.keys()]);
    return this.lastApply;
  }

  private fail(source: string, e: unknown): void {
    this.applyFailures++;
    this.lastFailureAt = Date.now();
    const problems = e instanceof ControlError ? e.problems : [];
    const message = (e as Error).message;
    this.lastError = { at: new Date().toISOString(), source, problems, message };
    this.opts.log?.error({ source, problems }, `policy not applied, the running one stays: ${message}`);
    this.audit({ action: 'policy.refused', by: source, message, problems: problems.length });
  }

  audit(entry: Record<string, unknown>): void {
    if (!this.opts.auditPath) return;
    // Appended synchronously: the record exists before the change is reported as done.
    appendFileSync(this.opts.auditPath, `${JSON.stringify({ time: new Date().toISOString(), generation: this.generation, ...entry })}\n`, { mode: 0o600 });
  }

  /** A change in the store, from this process or from outside. */
  private onStoreChange(key: 'policy' | 'tags', state: StoreState): void {
    if (this.writing) return;
    if (key === 'policy') {
      if (state.policy.revision === this.documentRevision || state.policy.text === this.rejectedText) return;
      this.applyText(state.policy.text, state.policy.revision, state.policy.source, this.storeName, state.policy);
    } else if (state.tags.revision !== this.tagsRevision) {
      this.tags = this.pruneTags(state.tags.value, this.document);
      this.tagsRevision = state.tags.revision;
      this.install(this.document, this.documentText, this.documentRevision, 'tags');
      this.scheduleExpiry();
    }
  }

  /** Validate and apply a policy text the store now holds; false (recorded) when it is refused. */
  private applyText(text: string, revision: number, source: string, by: string, from?: StoreState['policy']): boolean {
    try {
      const policy = this.validate(text, source, from);
      this.tags = this.pruneTags(this.tags, policy);
      const rec = this.install(policy, text, revision, by);
      this.rejectedText = null;
      this.audit({ action: 'policy.applied', by, revision, rules: rec.rules, compileMs: round(rec.compileMs) });
      return true;
    } catch (e) {
      this.rejectedText = text;
      this.fail(by, e);
      return false;
    }
  }

  /**
   * SIGHUP: make the running policy the file's. True when the file's policy is
   * in force afterwards (it may have been already), false when it is refused.
   */
  async reload(): Promise<boolean> {
    await this.store.refresh();
    const state = await this.store.read();
    if (state.policy.text === this.documentText) return true;
    return this.applyText(state.policy.text, state.policy.revision, state.policy.source, 'reload', state.policy);
  }

  /** PUT /v1/policy: validate and compile first, then compare-and-set in the store, then swap. */
  async putPolicy(text: string, expectRevision: number | null, by: string): Promise<ApplyRecord> {
    const source = '(request)';
    const policy = this.validate(text, source);
    // Compile before writing: a policy that cannot be compiled must not reach the store. What is
    // compiled here is what gets swapped in, unless the tags changed while the store was written.
    const tagsBefore = this.tags;
    const tags = this.pruneTags(tagsBefore, policy);
    const t0 = performance.now();
    const compiled = this.compile(policy, tags);
    const compileMs = performance.now() - t0;
    const cas = await this.own(() => this.store.putPolicy(text, expectRevision));
    if (!cas.ok) throw new ControlError(412, 'stale-revision', `the policy changed since revision ${expectRevision}: it is now at ${cas.revision}; read it again and reapply`);
    // The store's watch may already have applied it; if not, apply now.
    if (this.documentRevision !== cas.revision) {
      const same = this.tags === tagsBefore;
      this.tags = same ? tags : this.pruneTags(this.tags, policy);
      this.install(policy, text, cas.revision, by, same ? { compiled, compileMs } : undefined);
    }
    this.rejectedText = null;
    this.audit({ action: 'policy.applied', by, revision: cas.revision, rules: this.compiled.stats.rules, compileMs: round(this.lastApply!.compileMs) });
    return { ...this.lastApply! };
  }

  /** POST /v1/workloads/{name}/tags. */
  async changeTags(workload: string, change: TagChange): Promise<{ workload: string; tags: string[]; dynamic: DynamicTag[]; revision: number; apply: ApplyRecord }> {
    const { next, expiresAt } = tagsAfterChange(this.document, this.tags, workload, change, Date.now());
    const add = change.add ?? [], remove = change.remove ?? [];
    const expect = change.expectRevision === undefined || change.expectRevision === null ? this.tagsRevision : change.expectRevision;
    const cas = await this.own(() => this.store.putTags(next, expect));
    if (!cas.ok) throw new ControlError(412, 'stale-revision', `the tags changed since revision ${expect}: they are now at ${cas.revision}; read them again and retry`);
    if (this.tagsRevision !== cas.revision) {
      this.tags = next;
      this.tagsRevision = cas.revision;
      this.install(this.document, this.documentText, this.documentRevision, 'tags');
      this.scheduleExpiry();
    }
    for (const tag of add) this.audit({ action: 'tag.added', by: change.by, workload, tag, reason: change.reason, expiresAt: expiresAt === null ? null : new Date(expiresAt).toISOString(), revision: cas.revision });
    for (const tag of remove) this.audit({ action: 'tag.removed', by: change.by, workload, tag, reason: change.reason, revision: cas.revision });
    return { workload, tags: this.compiled.policy.workloads.get(workload)!.tags, dynamic: tagsOf(this.tags, workload) ?? [], revision: cas.revision, apply: this.lastApply! };
  }

  private async own<T>(write: () => Promise<T>): Promise<T> {
    this.writing = true;
    try {
      return await write();
    } catch (e) {
      // A read-only config file, a full disk, an unreachable store: nothing changed, and the caller is told why.
      const err = e as NodeJS.ErrnoException;
      throw new ControlError(503, 'store-unavailable', `the change was not stored, nothing was applied: ${err.code ?? ''} ${err.message}`.trim());
    } finally {
      this.writing = false;
    }
  }

  /** One timer, for the earliest expiring tag. */
  private scheduleExpiry(): void {
    if (this.ttlTimer) clearTimeout(this.ttlTimer);
    this.ttlTimer = null;
    let earliest = Infinity;
    for (const list of Object.values(this.tags)) for (const t of list) if (t.expiresAt !== null && t.expiresAt < earliest) earliest = t.expiresAt;
    if (earliest === Infinity) return;
    // setTimeout holds at most 2^31-1 ms; a longer TTL re-arms on the way.
    const delay = Math.min(Math.max(0, earliest - Date.now()), 0x7fffffff);
    this.ttlTimer = setTimeout(() => {
      // The store may refuse the write (a full disk, etcd away): log it and try again in a second, never crash.
      this.expire().catch((e: Error) => {
        this.opts.log?.error({ err: e.message }, 'an expired tag could not be removed from the store yet; trying again');
        if (this.ttlTimer) clearTimeout(this.ttlTimer);
        this.ttlTimer = setTimeout(() => this.scheduleExpiry(), 1000);
        this.ttlTimer.unref();
      });
    }, delay);
    this.ttlTimer.unref();
  }

  private async expire(): Promise<void> {
    const now = Date.now();
    const expired: Array<[string, DynamicTag]> = [];
    const next: TagMap = {};
    for (const [w, list] of Object.entries(this.tags)) {
      const keep = list.filter((t) => {
        if (t.expiresAt !== null && t.expiresAt <= now) { expired.push([w, t]); return false; }
        return true;
      });
      if (keep.length > 0) next[w] = keep;
    }
    if (expired.length === 0) { this.scheduleExpiry(); return; }
    const cas = await this.own(() => this.store.putTags(next, this.tagsRevision));
    if (!cas.ok) { this.scheduleExpiry(); return; } // someone changed the tags meanwhile: their change re-arms the timer
    if (this.tagsRevision !== cas.revision) {
      this.tags = next;
      this.tagsRevision = cas.revision;
      this.install(this.document, this.documentText, this.documentRevision, 'ttl');
    }
    for (const [workload, t] of expired) this.audit({ action: 'tag.expired', by: 'ttl', workload, tag: t.tag, reason: t.reason, addedBy: t.by, revision: cas.revision });
    this.scheduleExpiry();
  }
}

/**
 * Validate a policy as a store holds it: its text, or (a store that
 * assembles it from keys) its data, with every problem named by the key it
 * sits in, and a key that could not be read at all refusing the whole of it.
 * The controller and `tapwall ... --store` both read a store's policy so.
 * Returns the errors only; `policy` is null when there is any.
 */
export function storedPolicyCheck(text: string, source: string, from?: StoreState['policy']): { policy: Policy | null; problems: PolicyProblem[] } {
  const parsed = from?.data !== undefined ? policyFromData(from.data as never, source, undefined, { shadows: false }) : policyParse(text, source, { shadows: false });
  const keyOf = from?.keyOfPath;
  const problems = [
    ...(from?.keyProblems ?? []).map((k) => ({ severity: 'error' as const, code: 'bad-key', file: k.key, line: 1, column: 1, path: '(key)', message: k.message })),
    ...parsed.problems.filter((p) => p.severity === 'error').map((p) => (keyOf ? { ...p, file: keyOf(p.path) ?? p.file } : p)),
  ];
  return { policy: problems.length > 0 ? null : parsed.policy, problems };
}

/**
 * The dynamic tags after a change (validated against the document): the
 * controller and `tapwall tag --store` both go through it. Throws ControlError.
 */
export function tagsAfterChange(document: Policy, tags: TagMap, workload: string, change: TagChange, now: number): { next: TagMap; expiresAt: number | null } {
  const w = document.workloads.get(workload);
  if (!w) throw new ControlError(404, 'unknown-workload', `no workload named '${workload}' in the running policy`);
  const add = change.add ?? [], remove = change.remove ?? [];
  for (const t of [...add, ...remove]) {
    if (!NAME_RE.test(t)) throw new ControlError(400, 'bad-tag', `'${t}' is not a valid tag (letters, digits, _ . : -)`);
  }
  for (const t of remove) {
    if (w.tags.includes(t) && !(tagsOf(tags, workload) ?? []).some((d) => d.tag === t)) {
      throw new ControlError(409, 'static-tag', `'${t}' is a tag of ${workload} in the policy document; change the document to remove it`);
    }
  }
  const next = structuredClone(tags);
  let list = (tagsOf(next, workload) ?? []).filter((d) => !remove.includes(d.tag) && !add.includes(d.tag));
  const expiresAt = change.ttlSeconds ? now + change.ttlSeconds * 1000 : null;
  for (const tag of add) list.push({ tag, reason: change.reason, by: change.by, added: new Date(now).toISOString(), expiresAt });
  list = list.filter((d) => d.expiresAt === null || d.expiresAt > now);
  if (list.length > 0) next[workload] = list; else delete next[workload];
  return { next, expiresAt };
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
