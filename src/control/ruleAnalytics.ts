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
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Dataplane, RuleCount } from '../datapath/dataplane.js';
import type { Rule } from '../policy/model.js';

export interface RuleTotals { packets: number; bytes: number; connections: number; lastHit: number | null }

const SAVE_MS = 30_000;

function add(a: RuleTotals | undefined, b: RuleTotals): RuleTotals {
  if (!a) return { ...b };
  return {
    packets: a.packets + b.packets, bytes: a.bytes + b.bytes, connections: a.connections + b.connections,
    lastHit: a.lastHit === null ? b.lastHit : b.lastHit === null ? a.lastHit : Math.max(a.lastHit, b.lastHit),
  };
}

export class RuleAnalytics {
  private readonly base = new Map<string, RuleTotals>();
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
        this.base.set(k, { packets: Number(v.packets) || 0, bytes: Number(v.bytes) || 0, connections: Number(v.connections) || 0, lastHit: Number.isFinite(lastHit) ? lastHit : null });
      }
    } catch (e) {
      this.problems.push(`${this.path}: ${(e as Error).message}; rule analytics start again from zero`);
    }
  }

  /** Counts of rules a policy change removed: kept in the base. */
  retired(counts: RuleCount[]): void {
    for (const c of counts) this.base.set(`${c.section}/${c.id}`, add(this.base.get(`${c.section}/${c.id}`), c));
    this.lastHitMemo = null;
  }

  private lastHitMemo: { rules: readonly Rule[]; lastHit: Float64Array | null } | null = null;

  /**
   * Per rule of `rules`, when the kept base last saw it hit (Unix ms, 0:
   * never), or null when the base is empty; made once per rules array (the
   * base changes only when rules retire), not per scrape.
   */
  lastHitBefore(rules: readonly Rule[]): Float64Array | null {
    if (this.lastHitMemo?.rules === rules) return this.lastHitMemo.lastHit;
    let lastHit: Float64Array | null = null;
    if (this.base.size > 0) {
      lastHit = new Float64Array(rules.length);
      for (let i = 0; i < rules.length; i++) lastHit[i] = this.base.get(`${rules[i].section}/${rules[i].id}`)?.lastHit ?? 0;
    }
    this.lastHitMemo = { rules, lastHit };
    return lastHit;
  }

  /** Start saving the totals of this data plane's rules every SAVE_MS. */
  start(dp: Dataplane): void {
    this.dp = dp;
    this.timer = setInterval(() => this.save(), SAVE_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.save();
  }

  /** Totals per rule key (section/id): the kept base plus the data plane's counts now. */
  totals(): Map<string, RuleTotals> {
    const out = new Map(this.base);
    for (const c of this.dp?.ruleCounts() ?? []) out.set(`${c.section}/${c.id}`, add(this.base.get(`${c.section}/${c.id}`), c));
    return out;
  }

  save(): void {
    if (!this.dp) return;
    const obj: Record<string, unknown> = {};
    for (const [k, v] of this.totals()) obj[k] = { ...v, lastHit: v.lastHit === null ? null : new Date(v.lastHit).toISOString() };
    const tmp = `${this.path}.${process.pid}.tmp`;
    try {
      writeFileSync(tmp, `${JSON.stringify(obj)}\n`, { mode: 0o600 });
      renameSync(tmp, this.path);
    } catch (e) {
      this.onError(`rule analytics cannot be saved to ${this.path} (${(e as Error).message}); they are kept in memory`);
    }
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
