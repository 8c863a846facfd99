/**
 * Rule analytics: per rule (by section and id) the packets, bytes and
 * connection decisions it counted and when it last did, across policy
 * changes and restarts, so that rules never hit can be found and removed
 * with confidence.
 *
 * Layout: STATE_DIR/rules.json, { "<section>/<id>": { packets, bytes,
 * connections, lastHit (ISO or null) } }, rewritten whole (temporary file,
 * rename) every SAVE_MS and at stop.
 *
 * Counting: the data plane counts from zero in each process (its typed
 * arrays, carried over by id across policy changes). What is kept here is
 * the `base`: the file's totals at start, plus the counts of rules that a
 * policy change removed (onRulesRetired). Totals = base + the data plane's
 * counts now; nothing is counted twice.
 *
 * Saving runs on the forwarding thread, so the periodic save writes the
 * file a slice of rules per turn of the event loop (at 100,000 rules the
 * whole file at once took it 630-690 ms every 30 s); a policy change or a
 * retired rule during a save starts it again, so that no save mixes two
 * policies' counts. The save at stop is whole (the daemon is leaving).
 */
import { createWriteStream, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { slicedAll, writeSliced } from '../util/sliced.js';
import { RS_COUNT, ruleStatsRow } from '../flow/conntrack.js';
import { join } from 'node:path';
import type { Dataplane, RuleCount } from '../datapath/dataplane.js';
import type { Rule } from '../policy/model.js';

export interface RuleTotals { packets: number; bytes: number; connections: number; lastHit: number | null }

const SAVE_MS = 30_000;

/** Two totals of one rule added (the later last hit). */
export function totalsAdd(a: RuleTotals | undefined, b: RuleTotals): RuleTotals {
  if (!a) return { ...b };
  return {
    packets: a.packets + b.packets, bytes: a.bytes + b.bytes, connections: a.connections + b.connections,
    lastHit: a.lastHit === null ? b.lastHit : b.lastHit === null ? a.lastHit : Math.max(a.lastHit, b.lastHit),
  };
}

export class RuleAnalytics {
  private readonly base = new Map<string, Kept>();
  private readonly path: string;
  private timer: NodeJS.Timeout | null = null;
  private dp: Dataplane | null = null;
  readonly problems: string[] = [];

  constructor(stateDir: string, private readonly onError: (message: string) => void = () => undefined) {
    this.path = join(stateDir, 'rules.json');
    if (!existsSync(this.path)) return;
    try {
      const j = JSON.parse(readFileSync(this.path, 'utf8')) as Record<string, { packets?: number; bytes?: number; connections?: number; lastHit?: string | null }>;
      for (const [k, v] of Object.entries(j)) {
        const lastHit = typeof v.lastHit === 'string' ? Date.parse(v.lastHit) : NaN;
        this.base.set(k, { packets: Number(v.packets) || 0, bytes: Number(v.bytes) || 0, connections: Number(v.connections) || 0, lastHit: Number.isFinite(lastHit) ? lastHit : null, writtenBy: 0 });
      }
    } catch (e) {
      this.problems.push(`${this.path}: ${(e as Error).message}; rule analytics start again from zero`);
    }
  }

  /** Counts of rules a policy change removed: kept in the base. */
  retired(counts: RuleCount[]): void {
    for (const c of counts) this.base.set(`${c.section}/${c.id}`, { ...totalsAdd(this.base.get(`${c.section}/${c.id}`), c), writtenBy: 0 });
    this.changes++;
  }

  /** Base changes (rules retired) so far: a save in slices that sees one starts again. */
  private changes = 0;

  /** What the kept base has of this rule (from before this process, or retired), if anything. */
  keptOf(section: string, id: string): RuleTotals | undefined {
    return this.base.size === 0 ? undefined : this.base.get(`${section}/${id}`);
  }

  /** When the kept base last saw this rule hit (Unix ms), 0: never or unknown. */
  lastHitOf(section: string, id: string): number {
    return this.base.size === 0 ? 0 : this.base.get(`${section}/${id}`)?.lastHit ?? 0;
  }

  /** Start saving the totals of this data plane's rules every SAVE_MS. */
  start(dp: Dataplane): void {
    this.dp = dp;
    this.timer = setInterval(() => this.saveInSlices(), SAVE_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.stopping = true;
    rmSync(this.slicesTmp(), { force: true });
    this.save();
  }

  /** Totals per rule key (section/id): the kept base plus the data plane's counts now. */
  totals(): Map<string, RuleTotals> {
    const out = new Map<string, RuleTotals>(this.base);
    for (const c of this.dp?.ruleCounts() ?? []) out.set(`${c.section}/${c.id}`, totalsAdd(this.base.get(`${c.section}/${c.id}`), c));
    return out;
  }

  /** The state file's text, whole (at stop; and for tests). */
  save(): void {
    if (!this.dp) return;
    const text = slicedAll(this.totalsText());
    const tmp = `${this.path}.${process.pid}.tmp`;
    try {
      writeFileSync(tmp, text, { mode: 0o600 });
      renameSync(tmp, this.path);
    } catch (e) {
      this.onError(`rule analytics cannot be saved to ${this.path} (${(e as Error).message}); they are kept in memory`);
    }
  }

  private totalsText(): TotalsText {
    const dp = this.dp!;
    return new TotalsText(this.base, dp.compiled.rules, dp.ct.ruleStats, Date.now() - performance.now());
  }

  /** A save in slices is running; the daemon is stopping (a running one gives up). */
  private saving = false;
  private stopping = false;

  /**
   * Save without holding the forwarding thread: a slice of rules per turn,
   * streamed to a temporary file that replaces the state file when whole.
   * Resolves when saved (or given up: the error is reported, the totals stay
   * in memory).
   */
  async saveInSlices(): Promise<void> {
    if (!this.dp || this.saving) return;
    this.saving = true;
    const tmp = this.slicesTmp();
    try {
      for (;;) {
        const rules = this.dp.compiled.rules, changes = this.changes, text = this.totalsText();
        const out = createWriteStream(tmp, { mode: 0o600 });
        let problem: Error | null = null;
        out.on('error', (e) => { problem = e; });
        // A policy change or a retired rule since the save began: begin again, on the new counts.
        const stale = () => this.stopping || this.dp!.compiled.rules !== rules || this.changes !== changes;
        const whole = await writeSliced(out, { next: () => (stale() ? (out.destroy(), null) : text.next()) });
        if (problem) throw problem;
        // The rename frees the file it replaces (megabytes at 100,000 rules): on the thread pool.
        if (whole) { await rename(tmp, this.path); return; }
        if (this.stopping) return;
      }
    } catch (e) {
      // Stopping: the stop's own save (whole, after this one's file was removed) is the one that counts, and
      // says so if it fails; a rename that found its file removed by it is no news.
      if (!this.stopping) this.onError(`rule analytics cannot be saved to ${this.path} (${(e as Error).message}); they are kept in memory`);
    } finally {
      await rm(tmp, { force: true }).catch(() => undefined);
      this.saving = false;
    }
  }

  private slicesTmp(): string {
    return `${this.path}.${process.pid}.slices.tmp`;
  }
}

/** A kept total, and which save's text last wrote it with a rule in force. */
interface Kept extends RuleTotals { writtenBy: number }
let texts = 0;

/** Rules per slice of a save: about half a millisecond here. */
const SAVE_SLICE = 500;

function countsJson(packets: number, bytes: number, connections: number, lastHit: number | null): string {
  return `{"packets":${packets},"bytes":${bytes},"connections":${connections},"lastHit":${lastHit === null ? 'null' : `"${new Date(lastHit).toISOString()}"`}}`;
}

/**
 * The state file's JSON, a slice at a time: the rules of the policy in
 * force (base plus this process's counts), then the base's other rules
 * (retired, or from before the restart), each key once.
 */
class TotalsText {
  private i = 0;
  /** Marks the base entries this text wrote with the rules in force (a set of 100,000 keys grew in steps of several ms). */
  private readonly id = ++texts;
  private baseEntries: Iterator<[string, Kept]> | null = null;
  /** Entries written so far (a comma goes before every one but the first). */
  private written = 0;
  private ended = false;

  constructor(private readonly base: Map<string, Kept>, private readonly rules: readonly Rule[], private readonly stats: Float64Array, private readonly clockOffset: number) {}

  next(rows = SAVE_SLICE): string | null {
    if (this.ended) return null;
    let out = this.written === 0 && this.i === 0 && this.baseEntries === null ? '{' : '';
    const entry = (key: string, t: RuleTotals) => {
      out += `${this.written++ > 0 ? ',' : ''}${JSON.stringify(key)}:${countsJson(t.packets, t.bytes, t.connections, t.lastHit)}`;
    };
    let n = 0;
    const inForce = Math.min(this.rules.length, this.stats.length / RS_COUNT - 1);
    for (; n < rows && this.i < inForce; this.i++) {
      const r = this.rules[this.i];
      const key = `${r.section}/${r.id}`, kept = this.base.get(key);
      if (kept !== undefined) kept.writtenBy = this.id;
      entry(key, totalsAdd(kept, ruleStatsRow(this.stats, this.i + 1, this.clockOffset)));
      n++;
    }
    if (this.i < inForce) return out;
    this.baseEntries ??= this.base.entries();
    while (n < rows) {
      const e = this.baseEntries.next();
      if (e.done) {
        this.ended = true;
        return `${out}}\n`;
      }
      if (e.value[1].writtenBy === this.id) continue;
      entry(e.value[0], e.value[1]);
      n++;
    }
    return out;
  }

}

/**
 * "7d", "12h", "30m" before now, or an ISO date/time: epoch ms, or null when
 * it is neither.
 */
export function sinceOf(text: string, now = Date.now()): number | null {
  const m = /^(\d+)(s|m|h|d)$/.exec(text);
  if (m) return now - Number(m[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[m[2] as 's' | 'm' | 'h' | 'd'];
  const t = Date.parse(text);
  return Number.isFinite(t) ? t : null;
}
