/**
 * Policy history: every policy document put in force on this host, kept so
 * that an operator can see what changed, when and by whom, compare two
 * versions rule by rule, and go back to one.
 *
 * Layout (in the state folder)
 *   history/index.jsonl   one JSON line per entry, oldest first:
 *                         { id, at, by, reason?, revision, sha256, bytes, rules }
 *   history/<id>.policy   the document's text as it was applied
 *   Ids count up from 1 and are never reused; the newest `limit` entries
 *   are kept (older texts are removed and the index rewritten).
 *
 * Semantics
 *   An entry is recorded after the change's audit record, when the change is
 *   put in force; a text equal to the newest entry's is not recorded again
 *   (a reload of the same file). History is a convenience beside the audit
 *   log, which stays the ledger: a history that cannot be written (a full
 *   disk) is reported through onError and the change still applies.
 *   Rolling back is an ordinary, audited apply of an old entry's text.
 *
 * Who may call what: the controller records (control path, on the
 * forwarding thread: the text is hashed and written a slice per turn of the
 * event loop, records one after another; a 10 MB document hashed and written
 * at once held it 70-110 ms); the API reads, after `settled()`.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { TEXT_SLICE, writeTextSliced } from '../util/sliced.js';
import { join } from 'node:path';
import type { Policy, Rule } from '../policy/model.js';

export interface HistoryEntry {
  id: number;
  /** ISO time it was put in force. */
  at: string;
  by: string;
  /** Why, when the change said (X-Tapwall-Reason, --reason). */
  reason?: string;
  /** The store's revision of the document. */
  revision: number;
  sha256: string;
  bytes: number;
  rules: number;
}

export const HISTORY_LIMIT = 100;
/** Characters of a document hashed and written per turn. */
export const HISTORY_SLICE = TEXT_SLICE;

export class PolicyHistory {
  private entries: HistoryEntry[] = [];
  private readonly dir: string;
  /** Problems reading the index at start (kept entries that could be read). */
  readonly problems: string[] = [];

  constructor(stateDir: string, private readonly limit = HISTORY_LIMIT, private readonly onError: (message: string) => void = () => undefined) {
    this.dir = join(stateDir, 'history');
    const index = join(this.dir, 'index.jsonl');
    if (!existsSync(index)) return;
    for (const [n, line] of readFileSync(index, 'utf8').split('\n').entries()) {
      if (line.trim() === '') continue;
      try {
        const e = JSON.parse(line) as HistoryEntry;
        if (Number.isInteger(e.id) && e.id > 0 && existsSync(this.textPath(e.id))) this.entries.push(e);
      } catch {
        this.problems.push(`${index}:${n + 1}: not a history entry, skipped`);
      }
    }
  }

  private textPath(id: number): string {
    return join(this.dir, `${id}.policy`);
  }

  private lane: Promise<unknown> = Promise.resolve();

  /** Resolves when every record asked for so far is written (or given up). */
  async settled(): Promise<void> {
    await this.lane;
  }

  /**
   * Record a document put in force; resolves with its entry (the newest one
   * again when the text is unchanged), or null if it could not be kept.
   * Records are written in the order asked.
   */
  record(text: string, meta: { by: string; revision: number; rules: number; reason?: string }): Promise<HistoryEntry | null> {
    const run = this.lane.then(() => this.recordInSlices(text, meta));
    this.lane = run.catch(() => undefined);
    return run;
  }

  private async recordInSlices(text: string, meta: { by: string; revision: number; rules: number; reason?: string }): Promise<HistoryEntry | null> {
    const tmp = join(this.dir, `.text.${process.pid}.tmp`);
    try {
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      const hash = createHash('sha256');
      const bytes = await writeTextSliced(tmp, text, 0o600, (slice) => hash.update(slice));
      const sha256 = hash.digest('hex');
      const last = this.entries.at(-1);
      if (last && last.sha256 === sha256) {
        await rm(tmp, { force: true }); // the text just written, freed on the thread pool (see below)
        return last;
      }
      const entry: HistoryEntry = { id: (last?.id ?? 0) + 1, at: new Date().toISOString(), by: meta.by, ...(meta.reason ? { reason: meta.reason } : {}), revision: meta.revision, sha256, bytes, rules: meta.rules };
      renameSync(tmp, this.textPath(entry.id));
      try {
        const kept = [...this.entries, entry].slice(-this.limit);
        const indexTmp = join(this.dir, `.index.${process.pid}.tmp`);
        writeFileSync(indexTmp, kept.map((e) => JSON.stringify(e)).join('\n') + '\n', { mode: 0o600 });
        renameSync(indexTmp, join(this.dir, 'index.jsonl'));
        const dropped = this.entries.slice(0, this.entries.length + 1 - kept.length);
        this.entries = kept;
        // On the thread pool: removing a version frees it (a 10 MB text took 6-11 ms to free on this machine's
        // ext4), which the forwarding thread must not wait for. One left behind is only disk space.
        for (const old of dropped) void rm(this.textPath(old.id), { force: true }).catch(() => undefined);
        return entry;
      } catch (e) {
        rmSync(this.textPath(entry.id), { force: true });
        throw e;
      }
    } catch (e) {
      rmSync(tmp, { force: true });
      this.onError(`the policy history in ${this.dir} cannot be written (${(e as Error).message}); the change applies, the audit log has it`);
      return null;
    }
  }

  /** The entries kept, newest first. */
  list(): HistoryEntry[] {
    return [...this.entries].reverse();
  }

  get(id: number): { entry: HistoryEntry; text: string } | null {
    const entry = this.entries.find((e) => e.id === id);
    if (!entry) return null;
    try {
      return { entry, text: readFileSync(this.textPath(id), 'utf8') };
    } catch {
      return null;
    }
  }

  get newest(): HistoryEntry | null {
    return this.entries.at(-1) ?? null;
  }
}

/** One rule as a diff shows it. */
export interface RuleRef { section: string; id: string; position: number }

export interface PolicyDiff {
  added: RuleRef[];
  removed: RuleRef[];
  /** Same id, other place in the order (another section, or another position relative to the rules both have). */
  moved: Array<{ section: string; id: string; from: RuleRef; to: RuleRef }>;
  /** Same id, other content (sides, services, action, flags). */
  changed: Array<{ section: string; id: string; fields: string[] }>;
  /** The default action, SpoofGuard, workloads, groups or services differ. */
  other: string[];
}

const RULE_FIELDS = ['from', 'to', 'services', 'action', 'appliedTo', 'log', 'stateless', 'disabled'] as const;

function ruleField(r: Rule, f: (typeof RULE_FIELDS)[number]): string {
  return JSON.stringify(r[f as keyof Rule]);
}

/**
 * Rule-level differences from policy `a` to policy `b`: rules are the same
 * rule when their ids match (ids are unique in a policy). A rule counts as
 * moved when it changed section or its place among the rules both
 * documents have.
 */
export function policyDiff(a: Policy, b: Policy): PolicyDiff {
  const key = (r: Rule) => r.id;
  const flat = (p: Policy) => p.sections.flatMap((s) => s.rules);
  const ra = flat(a), rb = flat(b);
  const inA = new Map(ra.map((r, i) => [key(r), { r, i }]));
  const inB = new Map(rb.map((r, i) => [key(r), { r, i }]));
  const ref = (r: Rule, i: number): RuleRef => ({ section: r.section, id: r.id, position: i });
  const out: PolicyDiff = { added: [], removed: [], moved: [], changed: [], other: [] };
  for (const [k, { r, i }] of inB) if (!inA.has(k)) out.added.push(ref(r, i));
  for (const [k, { r, i }] of inA) if (!inB.has(k)) out.removed.push(ref(r, i));
  // Order among the rules both have: a rule moved when its rank there differs.
  const commonA = ra.filter((r) => inB.has(key(r))).map(key);
  const commonB = rb.filter((r) => inA.has(key(r))).map(key);
  const rankB = new Map(commonB.map((k, i) => [k, i]));
  commonA.forEach((k, i) => {
    const x = inA.get(k)!, y = inB.get(k)!;
    if (rankB.get(k) !== i || x.r.section !== y.r.section) out.moved.push({ section: x.r.section, id: x.r.id, from: ref(x.r, x.i), to: ref(y.r, y.i) });
    const fields = RULE_FIELDS.filter((f) => ruleField(x.r, f) !== ruleField(y.r, f));
    if (fields.length > 0) out.changed.push({ section: x.r.section, id: x.r.id, fields });
  });
  if (a.default !== b.default) out.other.push(`default: ${a.default} -> ${b.default}`);
  if (a.spoofguard !== b.spoofguard) out.other.push(`spoofguard: ${a.spoofguard} -> ${b.spoofguard}`);
  const named = (what: string, x: ReadonlyMap<string, unknown>, y: ReadonlyMap<string, unknown>) => {
    const gone = [...x.keys()].filter((n) => !y.has(n)), come = [...y.keys()].filter((n) => !x.has(n));
    const differ = [...x.keys()].filter((n) => y.has(n) && JSON.stringify(x.get(n)) !== JSON.stringify(y.get(n)));
    if (gone.length + come.length + differ.length > 0) out.other.push(`${what}: ${come.length} added, ${gone.length} removed, ${differ.length} changed`);
  };
  named('workloads', a.workloads, b.workloads);
  named('groups', a.groups, b.groups);
  named('services', a.services, b.services);
  return out;
}

/** A diff as text: one line per rule that differs. */
export function formatPolicyDiff(d: PolicyDiff): string {
  const lines: string[] = [];
  for (const r of d.added) lines.push(`+ ${r.section}/${r.id} (position ${r.position + 1})`);
  for (const r of d.removed) lines.push(`- ${r.section}/${r.id} (was position ${r.position + 1})`);
  for (const m of d.moved) lines.push(`~ ${m.section}/${m.id} moved: ${m.from.section} #${m.from.position + 1} -> ${m.to.section} #${m.to.position + 1}`);
  for (const c of d.changed) lines.push(`* ${c.section}/${c.id} changed: ${c.fields.join(', ')}`);
  for (const o of d.other) lines.push(`  ${o}`);
  return lines.length === 0 ? 'no differences' : lines.join('\n');
}
