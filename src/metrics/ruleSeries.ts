/**
 * The per-rule metric families, written as Prometheus text in slices.
 *
 * Why not prom-client's labelled counters for these: every inc() validates
 * and hashes its label set, and every scrape formats and escapes every label
 * again, all at once. With four families of one series per rule, a scrape
 * took the forwarding thread 200 ms at 10,000 rules and 3 s at 100,000, at
 * every scrape interval. Here a scrape is a RuleSeriesWriter that gives the
 * text a slice of rows at a time (the server writes one slice per turn of
 * the event loop, so frames are forwarded between slices), each slice one
 * pass over the typed counters.
 *
 * A writer holds the rules array and the counters it started with: a policy
 * swap during a scrape leaves it reading the old counters, whose values stop
 * at the swap (each series is read at most a few milliseconds apart; a
 * Prometheus scrape is not one instant either).
 *
 * Layout read: `stats[(order + 1) * RS_COUNT + RS.x]`, row 0 the default
 * action (flow/conntrack.ts); RS.lastHit is on the data plane's clock
 * (performance.now() ms), turned into Unix seconds with `clockOffset`.
 *
 * The text is what prom-client writes for the same series (names, HELP,
 * TYPE, label order, number format), so dashboards and alerts read it alike.
 */
import { RS, RS_COUNT, ruleStatsRow } from '../flow/conntrack.js';
import type { Rule } from '../policy/model.js';

/** A rule as a metric needs it. */
export type RuleLabel = Pick<Rule, 'section' | 'id' | 'action'>;

/** As prom-client escapes a label value (policy names never need it: they are checked names). */
export function escapeLabel(v: string): string {
  return /[\\\n"]/.test(v) ? v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"') : v;
}

/** As prom-client writes a value. */
function num(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v < 0 ? '-Inf' : '+Inf';
  return `${v}`;
}

export interface RuleSeriesInput {
  rules: readonly RuleLabel[];
  stats: Float64Array;
  defaultAction: string;
  /** Date.now() - performance.now() on the thread whose clock wrote RS.lastHit. */
  clockOffset: number;
  /** When a rule last hit before this process (Unix ms, 0: never), looked up as its row is written; or null. */
  lastHitBefore: ((rule: RuleLabel) => number) | null;
}

const LAST_HIT = 'tapwall_rule_last_hit_timestamp_seconds';

/** The families in the order written: [name, help, type, counter column or -1 for the last-hit gauge]. */
const FAMILIES: Array<[name: string, help: string, type: 'gauge' | 'counter', k: number]> = [
  [LAST_HIT, 'When the rule last let through or stopped a packet (Unix time), kept across policy changes and restarts; 0: never. Rules of the policy in force.', 'gauge', -1],
  ['tapwall_rule_packets_total', 'Packets matched by the rule at a vNIC (rule "default": the default action).', 'counter', RS.packets],
  ['tapwall_rule_bytes_total', 'Bytes matched by the rule at a vNIC.', 'counter', RS.bytes],
  ['tapwall_rule_connections_total', 'Connection decisions made by the rule (allowed or denied).', 'counter', RS.connections],
];

/** Rows per slice: a quarter to half a millisecond of the forwarding thread here. */
export const RULE_SERIES_SLICE = 1000;

/**
 * The four families' text, slice by slice: each family a blank line, "# HELP",
 * "# TYPE", then its series; ending in a newline.
 */
export class RuleSeriesWriter {
  private family = 0;
  /** Next rule row of the current family; -1: its header is next. */
  private row = -1;
  private readonly rows: number;

  constructor(private readonly x: RuleSeriesInput) {
    this.rows = Math.max(0, Math.min(x.rules.length, x.stats.length / RS_COUNT - 1));
  }

  /** The next text, of at most about `rows` series, or null when all is written. */
  next(rows = RULE_SERIES_SLICE): string | null {
    if (this.family >= FAMILIES.length) return null;
    const { rules, stats } = this.x;
    const [name, help, type, k] = FAMILIES[this.family];
    let out = '';
    if (this.row < 0) {
      out = `\n# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`;
      if (k >= 0) out += `${name}{section="",rule="default",action="${escapeLabel(this.x.defaultAction)}"} ${num(stats[k])}\n`;
      this.row = 0;
    }
    const end = Math.min(this.rows, this.row + rows);
    for (let i = this.row; i < end; i++) {
      const r = rules[i];
      const labels = `section="${escapeLabel(r.section)}",rule="${escapeLabel(r.id)}"`;
      if (k < 0) {
        const now = ruleStatsRow(stats, i + 1, this.x.clockOffset).lastHit ?? 0;
        const before = this.x.lastHitBefore === null ? 0 : this.x.lastHitBefore(r);
        out += `${name}{${labels}} ${num(Math.max(now, before) / 1000)}\n`;
      } else {
        out += `${name}{${labels},action="${escapeLabel(r.action)}"} ${num(stats[(i + 1) * RS_COUNT + k])}\n`;
      }
    }
    this.row = end;
    if (end >= this.rows) {
      this.family++;
      this.row = -1;
    }
    return out;
  }

}
