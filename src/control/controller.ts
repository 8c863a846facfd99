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
 *   and is recorded (lastError, applyFailures, the log). Validation and
 *   compilation are the preparer's (prepare.ts): in the daemon a worker
 *   thread, so forwarding never waits for them. Changes are prepared and
 *   installed one at a time, in the order they came.
 *   Writes through the API go to the store first (compare-and-set on the
 *   revision the caller read), and are applied when the store confirms them;
 *   changes from outside (the watched file) take the same path.
 *
 * Tags with a time-to-live are removed by one timer set for the earliest
 * expiry; the policy follows like for any other tag change.
 *
 * Every change is appended to the audit log (JSON lines): what, who, why.
 */
import type { PolicyHistory } from './history.js';
import { closeSync, openSync } from 'node:fs';
import { appendWhole } from './appendWhole.js';
import type { Logger } from 'pino';
import { NAME_RE } from '../policy/load.js';
import type { CompiledPolicy } from '../policy/compile.js';
import type { PolicyProblem } from '../policy/errors.js';
import type { Policy } from '../policy/model.js';
import { documentCheck, InlinePreparer, PrepareRefused, type DocumentRef, type Prepared, type Preparer } from './prepare.js';
import { tagsOf, type DynamicTag, type PolicyStore, type StoreState, type TagMap } from './store.js';

/**
 * What the controller drives: the data plane (or, in benchmarks, a decider
 * alone). setPolicy also makes the vNIC ports the ones the compiled policy
 * has points for: a workload added, removed or moved is attached or
 * detached without a restart.
 */
export interface PolicyTarget {
  setPolicy(compiled: CompiledPolicy): void;
  /** Make ready, over a few turns, the memory the swap to `compiled` will fill (called before setPolicy with a new document). */
  prefault?(compiled: CompiledPolicy): Promise<void>;
  /** Evaluate a staged policy beside the enforced one, never enforcing it (null: stop). */
  setStaged?(compiled: CompiledPolicy | null): void;
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
  /** Loading and validating the document's text (null: the document was held, as for a tag change). */
  loadMs: number | null;
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
  private stopped = false;
  private unwatch: (() => void) | null = null;
  readonly started = Date.now();
  /** Who changes from the store are attributed to in the audit log. */
  storeName = 'file';

  private readonly preparer: Preparer;
  /** The document in force, as the preparer knows it (a tag change names it without sending its text). */
  private documentRef!: DocumentRef;
  private nextDocumentId = 1;
  /** The staged policy (evaluated, never enforced), and a revision counting stage, unstage and promote. */
  private stagedRef: DocumentRef | null = null;
  private stagedRevision = 0;
  /** Changes are prepared and installed one after another, in the order they came. */
  private lane: Promise<unknown> = Promise.resolve();

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
      /** Who validates and compiles (default: inline, on this thread). */
      preparer?: Preparer;
      /** Where every document put in force is kept (history, diff, rollback); none: no history. */
      history?: PolicyHistory | null;
    } = {},
  ) {
    this.preparer = opts.preparer ?? new InlinePreparer();
  }

  /** The shadowed and partly shadowed rules of the document in force (the first SHADOWS_KEPT, and how many in all). */
  shadows: { count: number; list: PolicyProblem[] } = { count: 0, list: [] };

  /** The policy history, if this daemon keeps one. */
  get history(): PolicyHistory | null {
    return this.opts.history ?? null;
  }

  /** Load what the store holds and apply it; throws ControlError when the stored policy is invalid. */
  async start(): Promise<void> {
    const state = await this.store.read();
    const ref = this.documentOf(state.policy.text, state.policy.source, state.policy);
    // The first policy is prepared by the preparer every later change goes through, which keeps the
    // document it validated and what it compiled: the first tag change then compiles only what it changes.
    // (Prepared by a preparer of its own, the first quarantine after a start validated the whole document
    // again and compiled every vNIC: 0.5 s at 10,000 rules, where later ones took 7 ms.) With a compiling
    // thread this also leaves the forwarding thread one copy of the document, the one the thread handed
    // over: compiling it here and handing the thread's copy over afterwards kept two (400 MB at 100,000
    // rules) and handed one over while frames were forwarded.
    let prepared: Prepared;
    try {
      prepared = await this.prepare(ref, state.tags.value);
    } catch (e) {
      if (!this.preparer.offThread || (e instanceof ControlError && e.status === 400)) throw e;
      this.opts.log?.warn({ err: (e as Error).message }, 'the compiling thread could not prepare the first policy; compiled on this thread instead');
      prepared = await this.prepare(ref, state.tags.value, new InlinePreparer());
    }
    this.tags = this.pruneTags(state.tags.value, prepared.document);
    this.tagsRevision = state.tags.revision;
    this.install(prepared, ref, state.policy.revision, 'start');
    this.scheduleExpiry();
    this.unwatch = this.store.watch((key, s) => this.onStoreChange(key, s));
  }

  stop(): void {
    this.stopped = true;
    this.unwatch?.();
    if (this.ttlTimer) clearTimeout(this.ttlTimer);
    if (this.unrecordedTimer) clearTimeout(this.unrecordedTimer);
  }

  /** Stop, and let the preparer go (its worker thread). */
  async close(): Promise<void> {
    this.stop();
    await this.opts.history?.settled();
    await this.preparer.close();
  }

  get policy(): CompiledPolicy { return this.compiled; }
  get revision(): { policy: number; tags: number } { return { policy: this.documentRevision, tags: this.tagsRevision }; }
  get policyText(): string { return this.documentText; }
  get dynamicTags(): TagMap { return this.tags; }

  /** Resolves when every change taken so far has been prepared and installed or refused. */
  async settled(): Promise<void> {
    await this.lane;
  }

  /** Run `fn` after every change before it has been prepared and installed. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lane.then(fn, fn);
    this.lane = run.catch(() => undefined);
    return run;
  }

  /** A document for the preparer: the one in force if it is the same text, else a new number. */
  private documentOf(text: string, source: string, from?: StoreState['policy']): DocumentRef {
    // (Keys that could not be read leave the text as it was, and must still refuse the change.)
    if (this.documentRef && text === this.documentText && (from?.keyProblems ?? []).length === 0) return this.documentRef;
    return { id: this.nextDocumentId++, text, source, keyProblems: from?.keyProblems, keyIndex: from?.keyIndex, assembled: from?.assembled };
  }

  /**
   * Validate (a document seen for the first time) and compile with these tags.
   * An invalid document is a ControlError 400 with its problems (every
   * problem of a store that assembles it from keys names the key it sits in).
   */
  private async prepare(ref: DocumentRef, tags: TagMap, preparer: Preparer = this.preparer): Promise<Prepared> {
    try {
      return await preparer.prepare(ref, tags, this.opts.host ?? null);
    } catch (e) {
      if (e instanceof PrepareRefused) throw new ControlError(400, 'invalid-policy', e.message, e.problems);
      throw new ControlError(500, 'compile-failed', `the policy could not be compiled: ${(e as Error).message}`);
    }
  }

  /**
   * Drop dynamic tags of workloads the policy no longer has. An expired tag
   * stays (and in force) until expire() has stored and recorded its removal,
   * a moment after its time unless the store or the audit log cannot be
   * written: no change is in force that the audit log does not show.
   */
  private pruneTags(tags: TagMap, policy: Policy): TagMap {
    const out: TagMap = {};
    for (const [w, list] of Object.entries(tags)) if (policy.workloads.has(w)) out[w] = list;
    return out;
  }

  /** Swap; the data plane sees the old policy or the new one, nothing between. */
  private install(prepared: Prepared, ref: DocumentRef, revision: number, source: string, reason?: string): ApplyRecord {
    const { compiled, compileMs } = prepared;
    const newText = ref.text !== this.documentText;
    if (prepared.shadows) this.shadows = { count: prepared.shadowCount ?? prepared.shadows.length, list: prepared.shadows };
    const t1 = performance.now();
    this.target.setPolicy(compiled);
    const t2 = performance.now();
    this.preparer.installed(compiled);
    this.document = prepared.document;
    this.documentRef = ref;
    this.documentText = ref.text;
    this.documentRevision = revision;
    this.compiled = compiled;
    this.generation++;
    this.lastSuccessAt = Date.now();
    this.lastApply = {
      generation: this.generation, revision, loadMs: prepared.load?.ms ?? null, compileMs, swapMs: t2 - t1,
      reused: compiled.stats.reused, rules: compiled.stats.rules, at: new Date().toISOString(),
    };
    this.opts.log?.info({ source, ...this.lastApply }, 'policy applied');
    // A new document (not a tag change) goes into the history, after its audit record.
    // (Written a slice per turn, after this turn's swap; a request that applied it waits for it.)
    if (newText) void this.opts.history?.record(ref.text, { by: source, revision, rules: compiled.stats.rules, reason });
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
    try {
      this.record([{ action: 'policy.refused', by: source, message, problems: problems.length }], this.generation);
    } catch {
      // The refusal is in the log and the status; a full disk must not turn it into a crash.
    }
    // A change the audit log could not take is not refused: it is applied once it can be recorded.
    if (isUnrecorded(e)) this.retryUnrecorded();
  }

  /**
   * Append audit records, all or none: one write, and on failure the file is
   * cut back to where it was (no half line). A change's records are written
   * before it is installed, so the data plane never runs a change the log
   * does not have; a log that cannot be written (full, read-only) is a
   * ControlError 503 `audit-unwritable`.
   */
  private record(entries: Array<Record<string, unknown>>, generation = this.generation + 1): void {
    const path = this.opts.auditPath;
    if (!path) return;
    const time = new Date().toISOString();
    const bytes = Buffer.from(entries.map((e) => `${JSON.stringify({ time, generation, ...e })}\n`).join(''));
    let fd = -1;
    try {
      fd = openSync(path, 'a', 0o600);
      appendWhole(fd, bytes);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new ControlError(503, 'audit-unwritable', `the audit log ${path} cannot be written (${err.code ?? err.message}): the change is not applied until it is recorded`);
    } finally {
      if (fd >= 0) closeSync(fd);
    }
  }

  /**
   * Record a change this controller stored, before installing it. If the log
   * cannot take it, the store has it but the data plane does not: the
   * failure is reported and the store is read again every second until the
   * change is recorded and applied.
   */
  private recordStored(entries: Array<Record<string, unknown>>, revision: number, by: string): void {
    try {
      this.record(entries);
    } catch (e) {
      const err = new ControlError(503, 'audit-unwritable', `stored at revision ${revision} but not applied: ${(e as Error).message}; it is applied as soon as it can be recorded`);
      this.fail(by, err);
      throw err;
    }
  }

  private unrecordedTimer: NodeJS.Timeout | null = null;
  /** Read the store again in a second and apply what it holds (a change could not be recorded). */
  private retryUnrecorded(): void {
    if (this.unrecordedTimer || this.stopped) return;
    this.unrecordedTimer = setTimeout(() => {
      this.unrecordedTimer = null;
      void this.serial(async () => {
        const state = await this.store.read();
        await this.onStoreChangeNow('policy', state);
        await this.onStoreChangeNow('tags', state);
      }).catch((e: Error) => this.fail('retry', e));
    }, 1000);
    this.unrecordedTimer.unref();
  }

  /** A change in the store, from this process or from outside. */
  private onStoreChange(key: 'policy' | 'tags', state: StoreState): void {
    if (this.writing) return;
    void this.serial(() => this.onStoreChangeNow(key, state)).catch((e: Error) => this.fail(this.storeName, e));
  }

  private async onStoreChangeNow(key: 'policy' | 'tags', state: StoreState): Promise<void> {
    if (key === 'policy') {
      if (state.policy.revision === this.documentRevision || state.policy.text === this.rejectedText) return;
      await this.applyText(state.policy.text, state.policy.revision, state.policy.source, this.storeName, state.policy);
    } else if (state.tags.revision !== this.tagsRevision) {
      const tags = this.pruneTags(state.tags.value, this.document);
      const prepared = await this.prepare(this.documentRef, tags);
      this.record([{ action: 'tags.applied', by: this.storeName, revision: state.tags.revision }]);
      this.tags = tags;
      this.tagsRevision = state.tags.revision;
      this.install(prepared, this.documentRef, this.documentRevision, 'tags');
      this.scheduleExpiry();
      await this.restage();
    }
  }

  /** Validate and apply a policy text the store now holds; false (recorded) when it is refused. */
  private async applyText(text: string, revision: number, source: string, by: string, from?: StoreState['policy']): Promise<boolean> {
    try {
      const ref = this.documentOf(text, source, from);
      const prepared = await this.prepare(ref, this.tags);
      await this.target.prefault?.(prepared.compiled);
      this.record([{ action: 'policy.applied', by, revision, rules: prepared.compiled.stats.rules, compileMs: round(prepared.compileMs) }]);
      this.tags = this.pruneTags(this.tags, prepared.document);
      this.install(prepared, ref, revision, by);
      this.rejectedText = null;
      return true;
    } catch (e) {
      this.fail(by, e);
      if (!isUnrecorded(e)) this.rejectedText = text;
      return false;
    }
  }

  /**
   * SIGHUP: make the running policy the file's. True when the file's policy is
   * in force afterwards (it may have been already), false when it is refused.
   */
  async reload(): Promise<boolean> {
    return this.serial(async () => {
      await this.store.refresh();
      const state = await this.store.read();
      if (state.policy.text === this.documentText) return true;
      return this.applyText(state.policy.text, state.policy.revision, state.policy.source, 'reload', state.policy);
    });
  }

  /** PUT /v1/policy: validate and compile first, then compare-and-set in the store, then swap. */
  async putPolicy(text: string, expectRevision: number | null, by: string, reason?: string): Promise<ApplyRecord> {
    return this.serial(async () => this.putPolicyNow(text, expectRevision, by, reason));
  }

  /** The staged policy's text and revision (0: none staged yet), or null text when none is staged. */
  get staged(): { text: string | null; revision: number } {
    return { text: this.stagedRef?.text ?? null, revision: this.stagedRevision };
  }

  /**
   * PUT /v1/policy/staged: validate and compile a policy to evaluate beside
   * the enforced one on every new connection, never enforced. If-Match on
   * the staged revision (null: any). Audited.
   */
  async stage(text: string, expectStaged: number | null, by: string, reason?: string): Promise<{ stagedRevision: number; rules: number; compileMs: number }> {
    return this.serial(async () => {
      if (!this.target.setStaged) throw new ControlError(501, 'no-staging', 'this data plane cannot evaluate a staged policy');
      if (expectStaged !== null && expectStaged !== this.stagedRevision) throw new ControlError(412, 'stale-revision', `the staged policy changed since revision ${expectStaged}: it is now at ${this.stagedRevision}`);
      const ref: DocumentRef = { id: this.nextDocumentId++, text, source: '(staged)' };
      const prepared = await this.prepare(ref, this.tags);
      const revision = this.stagedRevision + 1;
      this.record([{ action: 'policy.staged', by, ...(reason ? { reason } : {}), stagedRevision: revision, rules: prepared.compiled.stats.rules }]);
      this.target.setStaged(prepared.compiled);
      this.stagedRef = ref;
      this.stagedRevision = revision;
      return { stagedRevision: revision, rules: prepared.compiled.stats.rules, compileMs: prepared.compileMs };
    });
  }

  /** DELETE /v1/policy/staged. */
  async unstage(by: string): Promise<void> {
    return this.serial(async () => {
      if (this.stagedRef === null) return;
      this.record([{ action: 'policy.unstaged', by, stagedRevision: this.stagedRevision }]);
      this.target.setStaged?.(null);
      this.stagedRef = null;
      this.stagedRevision++;
    });
  }

  /**
   * POST /v1/policy/promote: the staged policy becomes the enforced one, in
   * one step of the change lane: both revisions must still be the ones the
   * caller saw (412 otherwise), then it is applied like PUT /v1/policy and
   * nothing is staged any more.
   */
  async promote(expectEnforced: number | null, expectStaged: number | null, by: string, reason?: string): Promise<ApplyRecord & { stagedRevision: number }> {
    return this.serial(async () => {
      const ref = this.stagedRef;
      if (ref === null) throw new ControlError(409, 'nothing-staged', 'no policy is staged');
      if (expectStaged !== null && expectStaged !== this.stagedRevision) throw new ControlError(412, 'stale-revision', `the staged policy changed since revision ${expectStaged}: it is now at ${this.stagedRevision}`);
      const promoted = this.stagedRevision;
      const rec = await this.putPolicyNow(ref.text, expectEnforced, `${by} promote staged #${promoted}`, reason);
      this.target.setStaged?.(null);
      this.stagedRef = null;
      this.stagedRevision++;
      return { ...rec, stagedRevision: promoted };
    });
  }

  /** A tag change reaches the staged policy too: it is compiled again with the tags in force. */
  private async restage(): Promise<void> {
    const ref = this.stagedRef;
    if (ref === null || !this.target.setStaged) return;
    try {
      this.target.setStaged((await this.prepare(ref, this.tags)).compiled);
    } catch (e) {
      this.opts.log?.warn({ err: (e as Error).message }, 'the staged policy could not be compiled with the new tags; it is evaluated with the old ones');
    }
  }

  private async putPolicyNow(text: string, expectRevision: number | null, by: string, reason?: string): Promise<ApplyRecord> {
    // Prepared before writing: a policy that cannot be compiled must not reach the store. The
    // tags cannot change meanwhile (changes take turns), so what is prepared is what is swapped in.
    const ref = this.documentOf(text, '(request)');
    const prepared = await this.prepare(ref, this.tags);
    // The swap's memory made ready while the store writes (prefault never fails).
    const ready = this.target.prefault?.(prepared.compiled);
    const cas = await this.own(() => this.store.putPolicy(text, expectRevision));
    await ready;
    if (!cas.ok) throw new ControlError(412, 'stale-revision', `the policy changed since revision ${expectRevision}: it is now at ${cas.revision}; read it again and reapply`);
    if (this.documentRevision !== cas.revision) {
      this.recordStored([{ action: 'policy.applied', by, ...(reason ? { reason } : {}), revision: cas.revision, rules: prepared.compiled.stats.rules, compileMs: round(prepared.compileMs) }], cas.revision, by);
      this.tags = this.pruneTags(this.tags, prepared.document);
      this.install(prepared, ref, cas.revision, by, reason);
      // The caller reads the history next (a rollback names an entry): it has this version once this returns.
      await this.opts.history?.settled();
    }
    this.rejectedText = null;
    return { ...this.lastApply! };
  }

  /** POST /v1/workloads/{name}/tags. */
  async changeTags(workload: string, change: TagChange): Promise<{ workload: string; tags: string[]; dynamic: DynamicTag[]; revision: number; apply: ApplyRecord }> {
    return this.serial(async () => {
      const { next, expiresAt } = tagsAfterChange(this.document, this.tags, workload, change, Date.now());
      const add = change.add ?? [], remove = change.remove ?? [];
      const expect = change.expectRevision === undefined || change.expectRevision === null ? this.tagsRevision : change.expectRevision;
      // Compiled while the store writes (a file, or etcd over the network): enforced after both, never
      // before the change is stored; a change the store refuses is compiled for nothing and dropped.
      const preparing = this.prepare(this.documentRef, next).then((p) => ({ p, e: null }), (e: unknown) => ({ p: null, e }));
      const cas = await this.own(() => this.store.putTags(next, expect)).catch(async (e: unknown) => { await preparing; throw e; });
      if (!cas.ok) {
        await preparing;
        throw new ControlError(412, 'stale-revision', `the tags changed since revision ${expect}: they are now at ${cas.revision}; read them again and retry`);
      }
      const fresh = this.tagsRevision !== cas.revision;
      if (fresh) {
        // Recorded while the compiler works (the record needs only the stored revision; 0.15-0.3 ms of a
        // tag change's 2): still before the change is in force, and a change the log cannot take is not put there.
        try {
          this.recordStored([
            ...add.map((tag) => ({ action: 'tag.added', by: change.by, workload, tag, reason: change.reason, expiresAt: expiresAt === null ? null : new Date(expiresAt).toISOString(), revision: cas.revision })),
            ...remove.map((tag) => ({ action: 'tag.removed', by: change.by, workload, tag, reason: change.reason, revision: cas.revision })),
          ], cas.revision, change.by);
        } catch (e) {
          await preparing;
          throw e;
        }
      }
      const made = await preparing;
      if (fresh && this.tagsRevision !== cas.revision) {
        if (made.p === null) {
          // Stored and recorded, but not prepared (the compiling thread failed): the log says so next to the
          // record, and the store is read again in a second, which applies the change once it can be prepared.
          this.fail(change.by, made.e);
          this.retryUnrecorded();
          throw made.e;
        }
        this.tags = next;
        this.tagsRevision = cas.revision;
        this.install(made.p, this.documentRef, this.documentRevision, 'tags');
        this.scheduleExpiry();
      }
      return { workload, tags: this.compiled.policy.workloads.get(workload)!.tags, dynamic: tagsOf(this.tags, workload) ?? [], revision: cas.revision, apply: this.lastApply! };
    });
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
      this.serial(() => this.expire()).catch((e: Error) => {
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
    if (!cas.ok) {
      // Someone changed the tags meanwhile: their change (or the retry of one not yet recorded) re-arms the timer.
      // Not at once: the expired tags are still here, and that would spin.
      this.ttlTimer = setTimeout(() => this.scheduleExpiry(), 1000);
      this.ttlTimer.unref();
      return;
    }
    if (this.tagsRevision !== cas.revision) {
      const prepared = await this.prepare(this.documentRef, next);
      this.recordStored(expired.map(([workload, t]) => ({ action: 'tag.expired', by: 'ttl', workload, tag: t.tag, reason: t.reason, addedBy: t.by, revision: cas.revision })), cas.revision, 'ttl');
      this.tags = next;
      this.tagsRevision = cas.revision;
      this.install(prepared, this.documentRef, this.documentRevision, 'ttl');
    }
    this.scheduleExpiry();
  }
}

/** The audit log could not take the change's record (it is retried, not refused). */
function isUnrecorded(e: unknown): boolean {
  return e instanceof ControlError && e.code === 'audit-unwritable';
}

/** Validate a policy as a store holds it (prepare.ts: documentCheck); `tapwall ... --store` reads a store's policy so. */
export function storedPolicyCheck(text: string, source: string, from?: StoreState['policy']): { policy: Policy | null; problems: PolicyProblem[] } {
  return documentCheck({ text, source, keyProblems: from?.keyProblems, keyIndex: from?.keyIndex, assembled: from?.assembled });
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
