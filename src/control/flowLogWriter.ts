/**
 * Turns the flow log ring (flow/flowLog.ts) into JSON lines, off the packet
 * path: every DRAIN_MS it takes the waiting events and writes one line each,
 * plus one line per vNIC whose events the rate limit suppressed since the
 * last drain. The file is opened for appending and reopened on reopen()
 * (SIGUSR1), so logrotate can move it away.
 *
 * A line: { time, event: "decision"|"close", vnic, peerPort, from, to, proto,
 * src, sport, dst, dport, section, rule, point, verdict, reason, packets?,
 * bytes? }; "suppressed" lines: { time, event, vnic, count }.
 */
import { closeSync, openSync } from 'node:fs';
import { appendWhole } from './appendWhole.js';
import { FLE, FLK, flowLogTake, type FlowLog } from '../flow/flowLog.js';
import { SK_NAMES } from '../flow/conntrack.js';
import type { Family } from '../policy/addresses.js';
import { OUTCOME_NAMES } from '../packet/verdict.js';
import type { Dataplane } from '../datapath/dataplane.js';
import { addressOwners, portNameOf, protoName, wordsAddress } from './views.js';

const DRAIN_MS = 200;

export class FlowLogWriter {
  private fd: number | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly reported: Float64Array;
  lines = 0;
  /** Lines the file could not take (a full or read-only disk): counted, told, never a crash. */
  lost = 0;
  private lastComplaint = 0;

  constructor(
    private readonly dp: Dataplane, private readonly log: FlowLog, private readonly path: string | null, private readonly toStdout: boolean,
    /** Told (at most every 10 s) when lines are lost or the file cannot be reopened. */
    private readonly onError: (message: string) => void = () => undefined,
  ) {
    this.reported = new Float64Array(log.suppressed.length);
    if (path) this.fd = openSync(path, 'a', 0o640);
  }

  start(): void {
    this.timer = setInterval(() => this.drain(), DRAIN_MS);
    this.timer.unref();
  }

  /** Close and open the file again: after logrotate moved it, lines go to a new file of the same name. */
  reopen(): void {
    if (!this.path) return;
    this.drain();
    let fd: number;
    try {
      fd = openSync(this.path, 'a', 0o640);
    } catch (e) {
      this.onError(`cannot reopen the flow log ${this.path} (${(e as Error).message}); writing on to the file open before`);
      return;
    }
    if (this.fd !== null) closeSync(this.fd);
    this.fd = fd;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.drain();
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  drain(): void {
    const events = flowLogTake(this.log);
    const out: string[] = [];
    const compiled = this.dp.compiled;
    const owners = events.length > 0 ? addressOwners(compiled) : null;
    const portName = (p: number) => portNameOf(this.dp, p);
    for (const r of events) {
      const family = r[FLE.family] as Family;
      const ether = family !== 4 && family !== 6;
      const src = ether ? null : wordsAddress(r, FLE.src, family), dst = ether ? null : wordsAddress(r, FLE.dst, family);
      const ruleOut = r[FLE.ruleOut], ruleIn = r[FLE.ruleIn];
      // The deciding point: ingress when it was checked, else egress; its rule as it was when it decided.
      const point = ruleIn !== -2 ? 'ingress' : 'egress';
      const order = point === 'ingress' ? ruleIn : ruleOut;
      const rules = this.dp.rulesAt(r[FLE.generation]);
      const rule = order === -1 || rules === null ? null : rules[order] ?? null;
      const closing = r[FLE.kind] === FLK.close;
      const outcome = OUTCOME_NAMES[r[FLE.outcome]] ?? 'forward';
      const line: Record<string, unknown> = {
        time: new Date(r[FLE.time]).toISOString(),
        event: closing ? 'close' : 'decision',
        vnic: portName(r[FLE.port]), peerPort: portName(r[FLE.peerPort]),
        from: src === null ? null : owners!.get(src) ?? null, to: dst === null ? null : owners!.get(dst) ?? null,
        proto: ether ? 'ether' : protoName(r[FLE.proto]),
        ...(ether ? { ethertype: `0x${r[FLE.proto].toString(16).padStart(4, '0')}` } : {}),
        src, sport: r[FLE.sport], dst, dport: r[FLE.dport],
        section: rule === null ? null : rule.section,
        // 'default': no rule matched (a non-IP frame with no ether/ rule is dropped); null: the policy it was decided under is long gone.
        rule: order === -1 ? 'default' : rule === null ? null : rule.id,
        point,
        verdict: closing || outcome === 'forward' ? 'allow' : outcome === 'reject' ? 'reject' : 'drop',
        reason: closing ? 'closed' : outcome === 'forward' ? 'allowed' : outcome,
      };
      const stagedKind = r[FLE.staged];
      if (stagedKind > 0) {
        // A staged policy's disagreement: the enforced decision above, and what the staged policy would do.
        const order = r[FLE.stagedRule];
        const sr = order >= 0 ? this.dp.stagedPolicy?.rules[order] ?? null : null;
        line.event = 'staged';
        line.staged = { kind: SK_NAMES[stagedKind - 1], section: sr?.section ?? null, rule: order === -1 ? 'default' : sr?.id ?? null };
      }
      if (closing) {
        line.packets = { orig: r[FLE.packetsOrig], reply: r[FLE.packetsReply] };
        line.bytes = { orig: r[FLE.bytesOrig], reply: r[FLE.bytesReply] };
      }
      out.push(JSON.stringify(line));
    }
    const s = this.log.suppressed;
    for (let p = 0; p < s.length; p++) {
      if (s[p] === this.reported[p]) continue;
      out.push(JSON.stringify({ time: new Date().toISOString(), event: 'suppressed', vnic: portName(p), count: s[p] - this.reported[p] }));
      this.reported[p] = s[p];
    }
    if (out.length === 0) return;
    const text = `${out.join('\n')}\n`;
    this.lines += out.length;
    if (this.fd !== null) this.write(text, out.length);
    if (this.toStdout) process.stdout.write(text);
  }

  /** Whole lines or none: a write the disk refuses is cut back, and its lines are counted as lost. */
  private write(text: string, lines: number): void {
    try {
      appendWhole(this.fd as number, Buffer.from(text));
    } catch (e) {
      this.lost += lines;
      const now = Date.now();
      if (now - this.lastComplaint >= 10_000) {
        this.lastComplaint = now;
        this.onError(`the flow log ${this.path} cannot be written (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): ${this.lost} lines lost so far`);
      }
    }
  }
}
