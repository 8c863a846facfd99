/**
 * The data plane: an L2 switch between ports (vNICs and an optional uplink)
 * that runs every frame through the one decision path. It needs no MAC
 * learning: every vNIC's MAC is declared in the policy (and enforced by
 * SpoofGuard), and any other unicast MAC can only be behind the uplink.
 *
 * The pipeline, per batch read from one port (processBatch):
 *   read (ports.ts, io/) -> decide each frame (frameDecide.ts: parse, link
 *   SpoofGuard and VLAN, steering, then resolution, ip or ether) -> queue it
 *   on the ports it goes to, or write a reply over it (transmit.ts,
 *   reject.ts) -> one write per port with frames queued (transmit.ts).
 * Every received frame ends in exactly one Outcome, counted per port in
 * `outcomes` (port * OUTCOME_COUNT + outcome); rx = sum of outcomes. The
 * stages count what they take in and drop (sw.stageCounts), the transmit
 * stage what does not leave (port counters).
 *
 * This file owns the ports' lifecycle (attach, re-attach, vNICs that come
 * and go with the policy), the policy swap, and the batch loop. Connections
 * carried from another host or process are carried.ts's. Descriptors are
 * watched by libuv (never a busy loop); one readable event reads at most
 * MAX_BATCHES_PER_EVENT batches, so the API and metrics get their turn.
 */
import { portOpen, type PortIo, type PortMode, type PortOptions } from '../io/ports.js';
import { FlowTable, flowRemovePort } from '../flow/flowTable.js';
import { FlowStateFile, flowStateOpen, type PreviousFlows } from '../flow/flowState.js';
import { Conntrack, RS, RS_COUNT, SK_COUNT, ctSweep, ruleStatsRow } from '../flow/conntrack.js';
import { FlowLog } from '../flow/flowLog.js';
import { FRAG, PKT } from '../packet/parse.js';
import { OUTCOME_COUNT, Outcome } from '../packet/verdict.js';
import type { CompiledPolicy } from '../policy/compile.js';
import { rulePlaces, type Rule } from '../policy/model.js';
import { PolicyDecider } from './decide.js';
import { Switch, frameDecide, type SwitchOptions } from './frameDecide.js';
import { TypedHistogram } from '../util/typedHistogram.js';
import { touchSliced } from '../util/sliced.js';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ATTACH_CHECK_MS, AbsentPort, BATCH, DEFAULT_MAX_PORTS, PC, PC_COUNT, Port, fairQuota, ifindexIfUp, type PortSpec } from './ports.js';
import { txEnqueue, txFlush, txReply } from './transmit.js';
import { flowsExport, flowsImport, flowsResume, type FlowRecord } from './carried.js';

export { BATCH, DEFAULT_MAX_PORTS, FRAME_STRIDE, OFFLOAD_STRIDE, PC, PC_COUNT, fairQuota, type PortSpec } from './ports.js';
export type { FlowRecord } from './carried.js';

/** One rule's counters, with its last hit as wall-clock ms (null: never). */
export interface RuleCount { section: string; id: string; packets: number; bytes: number; connections: number; lastHit: number | null }

/** Rule `row - 1`'s counters (`row` indexes `s`, 0 being the default action's). */
function ruleCountOf(rule: Rule, s: Float64Array, row: number, clockOffset: number): RuleCount {
  return { section: rule.section, id: rule.id, ...ruleStatsRow(s, row, clockOffset) };
}

function ruleCountsOf(rules: readonly Rule[], s: Float64Array): RuleCount[] {
  // The data plane's clock (performance.now, ms) to wall-clock time.
  const offset = Date.now() - performance.now();
  return rules.map((r, i) => ruleCountOf(r, s, i + 1, offset));
}

/** One batch in BATCH_TIME_SAMPLE is timed: two clock reads per sampled batch, nothing per packet. */
const BATCH_TIME_SAMPLE = 8;

const MAX_BATCHES_PER_EVENT = 16;
/** The rule-counter work of a swap, done ahead of it (Dataplane.prefault). */
interface SwapReserve {
  /** The rules in force when it was worked out, and those of the policy it is for. */
  oldRules: readonly Rule[];
  rules: readonly Rule[];
  /** Every rule stays where it is: the counters stay as they are. */
  same: boolean;
  /** [new index, old index, length] per run of rules that moved together; null: not worked out. */
  runs: Int32Array | null;
  /** The new counter table and the old rules' kept marks, all zero, their pages present. */
  stats: Float64Array<ArrayBuffer> | null;
  kept: Uint8Array<ArrayBuffer> | null;
}

/** Rules looked at per turn ahead of a swap. */
const SLICE = 16384;

/** Policies whose rule numbering the flow log can still resolve (a record is read within 200 ms; a closing connection may be older). */
const RULE_HISTORY = 64;

/**
 * The staged-to-enforced map carried over an enforced swap. `from[n]` is
 * where new enforced rule n stood (-1: a rule the swap made, or moved to
 * another section); a staged rule's namesake goes where its old one went,
 * and the few rules the swap made are found by id. The same answer as
 * mapping every rule by id (ids are unique in a document, so a namesake
 * that is not carried is one of the made ones), in typed passes.
 */
function stagedMapFollow(old: Int32Array, from: Int32Array, oldCount: number, enforced: readonly Rule[], staged: readonly Rule[]): Int32Array<ArrayBuffer> {
  const went = new Int32Array(oldCount).fill(-1);
  let made: Map<string, number> | null = null;
  for (let n = 0; n < from.length; n++) {
    const f = from[n];
    if (f >= 0 && f < oldCount) went[f] = n;
    else (made ??= new Map()).set(enforced[n].id, n);
  }
  const out = new Int32Array(old.length);
  for (let s = 0; s < old.length; s++) {
    const o = old[s];
    let n = o >= 0 && o < oldCount ? went[o] : -1;
    if (n < 0) n = made?.get(staged[s].id) ?? -3;
    out[s] = n;
  }
  return out;
}

/** Rule id -> index of a document's rules, made once per document (by its sections) when a staged policy needs it. */
const rulesById = new WeakMap<CompiledPolicy['policy']['sections'], Map<string, number>>();
function ruleIndexById(rules: readonly Rule[], sections: CompiledPolicy['policy']['sections']): Map<string, number> {
  let byId = rulesById.get(sections);
  if (!byId) {
    byId = new Map();
    for (let i = 0; i < rules.length; i++) byId.set(rules[i].id, i);
    rulesById.set(sections, byId);
  }
  return byId;
}

export interface DataplaneOptions extends SwitchOptions {
  /** Port options: TAP persistence and owner; virtio-net headers (offload). */
  tap?: PortOptions;
  flowCapacity?: number;
  perPortQuota?: number;
  /** Flow log: events per second and burst per vNIC; unset: no flow log. */
  flowLog?: { rate: number; burst: number };
  /** Called for each I/O error worth logging (rate-limited by the caller). */
  onError?: (port: string, message: string) => void;
  /** Called when a port is attached again (its interface came back). */
  onInfo?: (port: string, message: string) => void;
  /** Opens a port; by default the real backends (io/ports.ts). Benchmarks pass in-memory ports. */
  portOpener?: (spec: PortSpec) => PortIo;
  /** Port slots (vNICs and uplink) there can ever be; DEFAULT_MAX_PORTS by default. */
  maxPorts?: number;
  /** How vNICs that a new policy adds are opened; by default the mode of the first vNIC at start (else tap). */
  vnicMode?: PortMode;
  /** A vNIC is being detached (its workload left this host, or the policy): its connections, before they are forgotten. */
  onDetach?: (workload: string, flows: FlowRecord[], next: CompiledPolicy) => void;
  /** Rules a new policy removed, with their counts (kept by rule analytics across policy changes). */
  onRulesRetired?: (counts: RuleCount[]) => void;
  /** A vNIC was attached for a workload (it may bring connections handed over from its old host). */
  onAttach?: (workload: string) => void;
  /**
   * Keep the flow table in this file (a shared mapping, flow/flowState.ts) so that a restarted
   * process resumes the connections (resumeFlows). Problems with it are listed in
   * flowStateProblems, and the table then lives in memory.
   */
  flowState?: string;
}

export class Dataplane {
  readonly ports: Port[] = [];
  /** The decision path's state: port addresses, policy decider, conntrack, fragments. */
  readonly sw: Switch;
  readonly decider: PolicyDecider;
  readonly table: FlowTable;
  readonly ct: Conntrack;
  /** Outcome counters: [port * OUTCOME_COUNT + outcome]. */
  readonly outcomes: Float64Array;
  /** Port counters: [port * PC_COUNT + PC.x]. */
  readonly portCounters: Float64Array;
  private sweepTimer: NodeJS.Timeout | null = null;
  private attachTimer: NodeJS.Timeout | null = null;
  /** Frames per batch read (every batch), and seconds to process a batch (sampled). */
  readonly batchSizes = new TypedHistogram(Float64Array.of(1, 2, 4, 8, 16, 32, 64));
  readonly batchSeconds = new TypedHistogram(Float64Array.of(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2));
  private batchSeq = 0;
  private policy: CompiledPolicy;
  private staged: CompiledPolicy | null = null;
  /** The next swap's rule-counter work, done ahead of it (prefault): valid for a swap from `oldRules` to `rules`. */
  private reserved: SwapReserve | null = null;
  /** The enforced document (its sections) that ct.stagedToEnforced was made against. */
  private stagedAgainst: CompiledPolicy['policy']['sections'] | null = null;
  private readonly capacity: number;
  private readonly vnicMode: PortMode;
  private started = false;
  /** The file the flow table lives in (opts.flowState), and what the previous process left there until resumed. */
  readonly flowState: FlowStateFile | null = null;
  private previousFlows: PreviousFlows | null = null;
  /** Why the flow state file could not be read or kept (the table is then in memory only). */
  readonly flowStateProblems: string[] = [];
  /**
   * The rules of the last RULE_HISTORY policies, by conntrack generation: a
   * flow-log record names its rules by number, and is read (every 200 ms, or
   * when a logged connection closes) under the policy it was decided under.
   */
  private readonly rulesByGeneration = new Map<number, readonly Rule[]>();

  constructor(compiled: CompiledPolicy, specs: PortSpec[], private readonly opts: DataplaneOptions = {}) {
    // Frames with virtio-net headers are forwarded with them: every port must carry them (TAP, AF_PACKET; not libpcap).
    if (opts.tap?.offload && specs.some((s) => s.mode === 'pcap')) {
      throw Object.assign(new Error('offload (virtio-net headers) needs TAP or attach ports, not pcap'), { code: 'EOFFLOAD' });
    }
    this.policy = compiled;
    this.capacity = Math.max(1, opts.maxPorts ?? DEFAULT_MAX_PORTS, specs.length);
    this.vnicMode = opts.vnicMode ?? specs.find((s) => s.workload !== null)?.mode ?? 'tap';
    const flowCapacity = opts.flowCapacity ?? 262_144;
    if (opts.flowState) {
      const opened = flowStateOpen(opts.flowState, flowCapacity, this.capacity);
      this.flowStateProblems.push(...opened.problems);
      this.flowState = opened.file;
      this.previousFlows = opened.previous;
    }
    this.table = new FlowTable({ capacity: flowCapacity, perPortQuota: opts.perPortQuota, maxPorts: this.capacity, entries: this.flowState?.entries });
    this.sw = new Switch(compiled, specs, this.table, opts, this.capacity);
    this.decider = this.sw.decider;
    this.ct = this.sw.ct;
    this.outcomes = new Float64Array(this.capacity * OUTCOME_COUNT);
    this.portCounters = new Float64Array(this.capacity * PC_COUNT);
    specs.forEach((spec, i) => {
      const port = new Port(i, spec, new AbsentPort(spec.name, spec.mode, 0), this.sw.up);
      this.openPort(port);
      this.ports.push(port);
    });
    // The ports the policy's points name, if they differ from the specs (a policy that moved vNICs since).
    this.reconcilePorts(compiled);
    this.ct.ruleStats = new Float64Array((compiled.rules.length + 1) * RS_COUNT);
    this.rulesByGeneration.set(this.ct.generation, compiled.rules);
    if (opts.flowLog) this.ct.flowLog = new FlowLog(8192, this.capacity, opts.flowLog.rate, opts.flowLog.burst);
  }

  /** Open (or find absent) the interface of a port; its state says which (control path). */
  private openPort(port: Port): void {
    const spec = port.spec, opts = this.opts;
    let io: PortIo;
    let ifindex = -1;
    try {
      if (opts.portOpener) io = opts.portOpener(spec);
      else if (spec.mode !== 'tap' && spec.workload !== null && ifindexIfUp(spec.name) < 0) {
        // A guest that is not running: its vNIC is reported absent, and attached when it appears.
        io = new AbsentPort(spec.name, spec.mode, opts.tap?.offload ? 10 : 0);
      } else {
        ifindex = spec.mode === 'tap' ? -1 : ifindexIfUp(spec.name);
        io = portOpen(spec.name, spec.mode, opts.tap);
      }
    } catch (e) {
      // At start this is fatal (the caller sees it); later a vNIC that cannot be opened stays absent, counted and reported.
      if (!this.started) throw e;
      this.portCounters[port.index * PC_COUNT + PC.rxErrors]++;
      opts.onError?.(spec.name, `cannot open: ${(e as Error).message}`);
      io = new AbsentPort(spec.name, spec.mode, opts.tap?.offload ? 10 : 0);
    }
    port.replaceIo(io);
    port.ifindex = ifindex;
    port.up = !(io instanceof AbsentPort);
    if (this.started && port.up) io.start((events) => this.onEvent(port, events));
  }

  /**
   * Make the vNIC ports the ones the compiled policy has points for (control
   * path, before its swap): a vNIC that left is closed and its connections
   * forgotten; a new one gets a slot (its own old one if it comes back, else a
   * free one, else a new one) and is opened. The uplink stays.
   */
  private reconcilePorts(compiled: CompiledPolicy): void {
    const want = new Map<string, string>();
    for (const [nic, pt] of compiled.points) want.set(nic, pt.egress.workload);
    for (const port of this.ports) {
      if (port.spec.workload === null || port.retired) continue;
      const w = want.get(port.spec.name);
      if (w === undefined) this.retirePort(port, compiled);
      else { port.spec = { ...port.spec, workload: w }; want.delete(port.spec.name); }
    }
    for (const [nic, workload] of want) this.addPort({ name: nic, mode: this.vnicMode, workload });
    if (this.opts.perPortQuota === undefined) this.table.quota = fairQuota(this.table.capacity, this.nics.length);
    // The flow state file names each slot, so that a later process can find the ports its entries refer to.
    this.flowState?.setPorts(this.ports.map((p) => (p.retired ? '' : p.spec.name)));
  }

  private retirePort(port: Port, next: CompiledPolicy): void {
    if (this.opts.onDetach && port.spec.workload !== null) this.opts.onDetach(port.spec.workload, this.exportPortFlows(port.index), next);
    port.io.close();
    port.replaceIo(new AbsentPort(port.spec.name, port.spec.mode, port.io.vnetHdr));
    port.up = false;
    port.retired = true;
    port.txCount = 0;
    this.sw.clearPort(port.index);
    const forgotten = flowRemovePort(this.table, port.index);
    this.opts.onInfo?.(port.spec.name, `vNIC detached (${forgotten} connections forgotten)`);
  }

  private addPort(spec: PortSpec): void {
    let port = this.ports.find((p) => p.retired && p.spec.name === spec.name) ?? null;
    if (port === null) {
      port = this.ports.find((p) => p.retired) ?? null;
      if (port !== null) {
        // Another vNIC's old slot: its counters start again from zero under the new name.
        this.outcomes.fill(0, port.index * OUTCOME_COUNT, (port.index + 1) * OUTCOME_COUNT);
        this.portCounters.fill(0, port.index * PC_COUNT, (port.index + 1) * PC_COUNT);
        port.droppedBefore = 0;
        this.sw.groupRefused[port.index] = 0;
      } else if (this.ports.length < this.capacity) {
        port = new Port(this.ports.length, spec, new AbsentPort(spec.name, spec.mode, 0), this.sw.up);
        this.ports.push(port);
      } else {
        this.opts.onError?.(spec.name, `no port slot left (${this.capacity}): vNIC not attached`);
        return;
      }
    }
    port.spec = spec;
    port.retired = false;
    this.sw.setPort(port.index, spec.name);
    this.openPort(port);
    this.opts.onInfo?.(spec.name, `vNIC attached for ${spec.workload}`);
    if (spec.workload !== null) this.attached.push(spec.workload);
  }

  /** Workloads attached during the policy swap in progress: told (onAttach) once the swap is done. */
  private attached: string[] = [];

  /** The connections with an end at port i (control path). */
  exportPortFlows(i: number): FlowRecord[] {
    return flowsExport(this.table, i);
  }

  /**
   * Take over connections handed from a VM's old host, for its vNIC here
   * (control path; carried.ts). Returns how many were taken.
   */
  importPortFlows(workload: string, flows: FlowRecord[]): number {
    const port = this.ports.find((p) => !p.retired && p.spec.workload === workload);
    return port ? flowsImport(this.table, this.sw, port.index, flows, this.now()) : 0;
  }

  /**
   * Take up the connections the previous process left in the flow state
   * file (control path: after the first policy has attached the ports,
   * before forwarding starts; carried.ts). Call once; later calls find
   * nothing.
   */
  resumeFlows(): { resumed: number; left: number; from: number | null } {
    const prev = this.previousFlows;
    this.previousFlows = null;
    if (prev === null) return { resumed: 0, left: 0, from: null };
    const slotOf = new Map<string, number>();
    for (const p of this.ports) if (!p.retired) slotOf.set(p.spec.name, p.index);
    return flowsResume(this.table, this.sw, prev, slotOf, this.now());
  }

  /** The ports as the decision path numbers them (free slots keep their place, with no name), for the tracer. */
  switchPorts(): Array<{ name: string; workload: string | null }> {
    return this.ports.map((p) => ({ name: p.retired ? '' : p.spec.name, workload: p.retired ? '' : p.spec.workload }));
  }

  /** The workload behind port i now (a hot update may rename it), or the uplink. */
  workloadOf(i: number): string | null {
    return this.sw.workloads[i]?.name ?? this.ports[i].spec.workload;
  }

  /**
   * Do ahead of the swap to `compiled`, a slice per turn, what its turn
   * would otherwise do all at once for the rule counters: whether every
   * rule stays where it is; if not, where each run of rules came from; and
   * the new counter table, its pages made present. The swap's turn then
   * copies a few runs into memory that is there: at 100,000 rules moved by
   * one inserted above them it took 16 ms (10 of them page faults, 13 µs a
   * first touch on this VM; the rest a loop of 400,000 copies that runs
   * once per reload, before it is optimized), now a few copies of whole
   * runs. Control path; the swap uses it only if it is for the same two
   * rule lists, else does it all itself as before.
   */
  async prefault(compiled: CompiledPolicy): Promise<void> {
    // A tag change keeps the document, and so every counter where it is.
    if (compiled.policy.sections === this.policy.policy.sections) return;
    const oldRules = this.policy.rules, rules = compiled.rules;
    const reserve: SwapReserve = { oldRules, rules, same: false, runs: null, stats: null, kept: null };
    this.reserved = reserve;
    let same = rules.length === oldRules.length;
    for (let at = 0; same && at < rules.length; at += SLICE) {
      same = samePlacesIn(oldRules, rules, at, Math.min(rules.length, at + SLICE));
      await nextTurn();
    }
    if (same) { reserve.same = true; return; }
    const moved = compiled.ruleFrom;
    // The compiling thread's answer (else the swap works it out by id, as before).
    if (!moved || moved.sections !== this.policy.policy.sections || moved.from.length !== rules.length) return;
    const runs: number[] = [];
    for (const _ of movedRuns(moved.from, runs)) await nextTurn();
    const stats = new Float64Array((rules.length + 1) * RS_COUNT), kept = new Uint8Array(oldRules.length);
    await touchSliced([stats, kept]);
    reserve.runs = Int32Array.from(runs);
    reserve.stats = stats;
    reserve.kept = kept;
  }

  /** Swap in a new compiled policy: cached verdicts become stale and are re-checked. */
  setPolicy(compiled: CompiledPolicy): void {
    // Rule counters follow their rule (section and id), wherever the new policy puts it. A tag
    // change keeps the document, so its rules keep their places: nothing to move.
    const before = { sections: this.policy.policy.sections, count: this.policy.rules.length };
    // null: every rule where it was (or the same document).
    const from = compiled.policy.sections !== before.sections ? this.ruleStatsFollow(compiled) : null;
    this.reserved = null;
    this.reconcilePorts(compiled);
    this.sw.setPolicy(compiled);
    this.policy = compiled;
    this.rulesByGeneration.set(this.ct.generation, compiled.rules);
    for (const g of this.rulesByGeneration.keys()) {
      if (this.rulesByGeneration.size <= RULE_HISTORY) break;
      this.rulesByGeneration.delete(g); // the oldest first (insertion order)
    }
    // The staged policy's points follow the ports, and "the same rule" follows the enforced rules' new places.
    if (this.staged !== null) this.stagedFollow(this.staged, before, from);
    const attached = this.attached;
    this.attached = [];
    for (const w of attached) this.opts.onAttach?.(w);
  }

  /** The staged policy evaluated beside the enforced one (never enforced), or null. */
  get stagedPolicy(): CompiledPolicy | null {
    return this.staged;
  }

  /**
   * Evaluate `compiled` beside the enforced policy on every new connection,
   * never enforcing it (null: stop). Its disagreement counters start again
   * for a new document and are kept when the same document is recompiled
   * (a tag change). Control path.
   */
  setStaged(compiled: CompiledPolicy | null): void {
    this.stagedFollow(compiled, null, null);
  }

  /**
   * setStaged, and after an enforced swap: `enforcedBefore` is the enforced
   * document the swap replaced and `from` where its rules went (null: each
   * where it was), so that the staged map follows them without keying every
   * rule again.
   */
  private stagedFollow(compiled: CompiledPolicy | null, enforcedBefore: { sections: CompiledPolicy['policy']['sections']; count: number } | null, from: Int32Array | null): void {
    const ct = this.ct;
    if (compiled === null) {
      ct.staged = null;
      this.staged = null;
      this.stagedAgainst = null;
      return;
    }
    const nics = this.sw.names.map((name, i) => (this.sw.isVnic[i] === 1 ? name : ''));
    const sameDocument = this.staged !== null && this.staged.policy.sections === compiled.policy.sections;
    // Which enforced rule is "the same rule" depends on the two documents only: a tag change on either
    // side keeps the map (remaking it took 100 ms of the forwarding thread at 100,000 rules, on every
    // quarantine while a policy was staged).
    const enforcedSections = this.policy.policy.sections;
    let map = ct.stagedToEnforced;
    if (!sameDocument || this.stagedAgainst !== enforcedSections) {
      const carried = sameDocument && enforcedBefore !== null && this.stagedAgainst === enforcedBefore.sections && map.length === compiled.rules.length;
      if (carried && from === null) {
        // The enforced rules stayed where they were: so does every staged rule's namesake.
      } else if (carried && from !== null) {
        map = stagedMapFollow(map, from, enforcedBefore.count, this.policy.rules, compiled.rules);
      } else {
        const enforcedById = ruleIndexById(this.policy.rules, enforcedSections);
        map = new Int32Array(compiled.rules.length);
        for (let i = 0; i < map.length; i++) map[i] = enforcedById.get(compiled.rules[i].id) ?? -3;
      }
    }
    const decider = new PolicyDecider(compiled, nics);
    if (!sameDocument) ct.stagedStats = new Float64Array((compiled.rules.length + 1) * SK_COUNT);
    if (ct.stagedLog === null) ct.stagedLog = new FlowLog(256, this.capacity, 20, 40);
    ct.stagedToEnforced = map;
    ct.staged = decider;
    this.staged = compiled;
    this.stagedAgainst = enforcedSections;
  }

  /**
   * The counters of the policy's rules now (control path): per rule, and the
   * last hit as wall-clock milliseconds (null: never).
   */
  ruleCounts(): RuleCount[] {
    return ruleCountsOf(this.policy.rules, this.ct.ruleStats);
  }

  /** Move the per-rule counters with their rules; returns where each new rule stood (null: each where it was). */
  private ruleStatsFollow(compiled: CompiledPolicy): Int32Array | null {
    const old = this.ct.ruleStats, oldRules = this.policy.rules;
    // What prefault worked out ahead of this turn, if it was for these two rule lists.
    const ahead = this.reserved !== null && this.reserved.oldRules === oldRules && this.reserved.rules === compiled.rules ? this.reserved : null;
    // The usual reload changes a comment or a rule's fields, not which rules sit where: then every
    // counter stays in its place and nothing is built (10,000 keys, a pause of the packet thread).
    if (ahead?.same || (ahead === null && sameRulePlaces(oldRules, compiled.rules))) return null;
    // Where each rule stood: worked out off this thread for a reload through the compiling thread, else here.
    const moved = compiled.ruleFrom;
    const from = moved && moved.sections === this.policy.policy.sections && moved.from.length === compiled.rules.length ? moved.from : rulePlaces(oldRules, compiled.rules);
    // Rows the old table lacks stay 0.
    const rows = Math.min(oldRules.length, old.length / RS_COUNT - 1);
    const kept = ahead?.kept ?? new Uint8Array(oldRules.length);
    const stats = ahead?.stats ?? new Float64Array((compiled.rules.length + 1) * RS_COUNT);
    stats.set(old.subarray(0, RS_COUNT));
    let runs: ArrayLike<number> | null = ahead?.runs ?? null;
    if (runs === null) {
      const found: number[] = [];
      for (const _ of movedRuns(from, found));
      runs = found;
    }
    // Whole runs of rules that moved together (100,000 moved by one inserted above them: one run).
    for (let r = 0; r < runs.length; r += 3) {
      const i = runs[r], f = runs[r + 1], len = runs[r + 2];
      kept.fill(1, f, f + len);
      const n = Math.min(len, rows - f);
      if (n > 0) stats.set(old.subarray((f + 1) * RS_COUNT, (f + 1 + n) * RS_COUNT), (i + 1) * RS_COUNT);
    }
    // Rules the new policy no longer has: their counts go to whoever keeps them (rule analytics), not nowhere.
    const retired: RuleCount[] = [], offset = Date.now() - performance.now();
    for (let j = kept.indexOf(0); j >= 0 && j < rows; j = kept.indexOf(0, j + 1)) {
      if (old[(j + 1) * RS_COUNT + RS.packets] > 0) retired.push(ruleCountOf(oldRules[j], old, j + 1, offset));
    }
    if (retired.length > 0) this.opts.onRulesRetired?.(retired);
    this.ct.ruleStats = stats;
    return from;
  }

  /** The rules of the policy in force at conntrack generation `g` (recent ones only), or null. */
  rulesAt(g: number): readonly Rule[] | null {
    return this.rulesByGeneration.get(g) ?? null;
  }

  /** Frames port i's backends dropped before they could be read, since it was first opened (control path). */
  backendDropped(i: number): number {
    const port = this.ports[i];
    return port.droppedBefore + port.io.dropped();
  }

  /** The vNICs (workload ports) this data plane serves now. */
  get nics(): string[] {
    return this.ports.filter((p) => p.spec.workload !== null && !p.retired).map((p) => p.spec.name);
  }

  get compiled(): CompiledPolicy {
    return this.policy;
  }

  start(): void {
    this.started = true;
    for (const port of this.ports) if (port.up) port.io.start((events) => this.onEvent(port, events));
    // Expire and revalidate in the background too, for when no batches arrive.
    this.sweepTimer = setInterval(() => ctSweep(this.ct, this.now(), 4096), 250);
    this.sweepTimer.unref();
    if (!this.opts.portOpener && (this.vnicMode !== 'tap' || this.ports.some((p) => p.spec.mode !== 'tap'))) {
      this.attachTimer = setInterval(() => this.checkAttachments(), ATTACH_CHECK_MS);
      this.attachTimer.unref();
    }
  }

  stop(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    if (this.attachTimer) clearInterval(this.attachTimer);
    for (const port of this.ports) port.io.close();
  }

  /**
   * Guests stop and start: their TAP goes away and comes back (maybe as a new
   * interface with the same name). An attached port whose interface is gone
   * is closed and marked down; one whose interface is there again (or was
   * replaced) is opened again. Control path, every ATTACH_CHECK_MS.
   */
  checkAttachments(): void {
    for (const port of this.ports) {
      if (port.spec.mode === 'tap' || port.retired) continue;
      const now = ifindexIfUp(port.spec.name);
      if (port.up && now === port.ifindex && now > 0) continue;
      if (!(port.io instanceof AbsentPort)) {
        port.io.close();
        port.replaceIo(new AbsentPort(port.spec.name, port.spec.mode, port.io.vnetHdr));
        if (port.up) this.opts.onError?.(port.spec.name, now < 0 ? 'interface gone: port down' : 'interface replaced: attaching again');
        port.up = false;
      }
      if (now < 0) continue;
      try {
        const io = portOpen(port.spec.name, port.spec.mode, this.opts.tap);
        port.replaceIo(io);
        port.ifindex = now;
        port.up = true;
        this.portCounters[port.index * PC_COUNT + PC.attaches]++;
        io.start((events) => this.onEvent(port, events));
        this.opts.onInfo?.(port.spec.name, 'interface attached');
      } catch (e) {
        this.portCounters[port.index * PC_COUNT + PC.rxErrors]++;
        this.opts.onError?.(port.spec.name, `cannot attach: ${(e as Error).message}`);
      }
    }
  }

  private now(): number {
    return Math.floor(performance.now());
  }

  private onEvent(port: Port, events: number): void {
    if (!port.up) return; // down: checkAttachments closes it and attaches again when it can
    if (events < 0) {
      // The port's watch failed; the backend has stopped watching it.
      port.up = false;
      this.portCounters[port.index * PC_COUNT + PC.rxErrors]++;
      this.opts.onError?.(port.spec.name, `poll error ${events}`);
      return;
    }
    for (let b = 0; b < MAX_BATCHES_PER_EVENT; b++) {
      const got = port.io.read(port.rxBuf, port.rxOff, port.rxLen, BATCH, port.stride);
      if (got < 0) {
        // The interface vanished or went down (EIO, ENXIO, ENETDOWN...): the backend stops reading it; count, report.
        this.portCounters[port.index * PC_COUNT + PC.rxErrors]++;
        this.opts.onError?.(port.spec.name, `read failed: errno ${-got}`);
        port.up = false;
        return;
      }
      if (got === 0) return;
      this.processBatch(port, got);
      if (got < BATCH) return;
    }
  }

  /** Read and process what port `index` has waiting, as on a readable event (benchmarks drive this directly). */
  pump(index: number): void {
    this.onEvent(this.ports[index], 1);
  }

  processBatch(port: Port, count: number): void {
    const sw = this.sw, buf = port.rxBuf, ports = this.ports;
    const P = port.index;
    const outcomes = this.outcomes, pc = this.portCounters;
    const now = this.now();
    const hdr = port.io.vnetHdr;
    this.batchSizes.observe(count);
    const timed = ++this.batchSeq % BATCH_TIME_SAMPLE === 0;
    const started = timed ? performance.now() : 0;
    for (let i = 0; i < count; i++) {
      // With offload every frame sits behind a virtio-net header, forwarded with it untouched.
      const off = port.rxOff[i] + hdr, len = port.rxLen[i] - hdr;
      pc[P * PC_COUNT + PC.rxPackets]++;
      pc[P * PC_COUNT + PC.rxBytes] += len;
      let outcome: number;
      if (len > port.stride - hdr || len < 0) outcome = Outcome.malformed;
      else {
        outcome = frameDecide(sw, buf, off, len, P, now, null);
        if (outcome === Outcome.forward) {
          const dests = sw.dests, rxOff = port.rxOff[i], rxLen = port.rxLen[i];
          for (let k = 0; k < sw.destCount; k++) txEnqueue(pc, ports[dests[k]], port, rxOff, rxLen);
        } else if ((outcome === Outcome.reject || outcome === Outcome.cut) && sw.pkt[PKT.fragment] !== FRAG.later) txReply(pc, port, i, sw.pkt, now);
      }
      outcomes[P * OUTCOME_COUNT + outcome]++;
    }
    txFlush(pc, ports, this.opts.onError);
    ctSweep(this.ct, now, 64);
    if (timed) this.batchSeconds.observe((performance.now() - started) / 1000);
  }

}

/** Do two rule lists hold the same rules (by section and id) at the same places? */
function sameRulePlaces(a: readonly Rule[], b: readonly Rule[]): boolean {
  return a.length === b.length && samePlacesIn(a, b, 0, a.length);
}

/** The same, over places [from, to) of two lists at least that long. */
function samePlacesIn(a: readonly Rule[], b: readonly Rule[], from: number, to: number): boolean {
  // The same object first: a reload hands unchanged rules over as the ones already held.
  for (let i = from; i < to; i++) if (a[i] !== b[i] && (a[i].id !== b[i].id || a[i].section !== b[i].section)) return false;
  return true;
}

/**
 * Runs of rules that stand one after another in the new list and stood one
 * after another in the old (`from[n]`: where new rule n stood, -1 for a new
 * one), appended to `out` as [new index, old index, length]. Yields every
 * SLICE entries, so that prefault can let frames through; the swap runs it
 * through at once.
 */
function* movedRuns(from: Int32Array, out: number[]): Generator<void> {
  let start = 0;
  for (let n = 1; n <= from.length; n++) {
    if (n === from.length || from[n] < 0 || from[n - 1] < 0 || from[n] !== from[n - 1] + 1) {
      if (from[start] >= 0) out.push(start, from[start], n - start);
      start = n;
    }
    if (n % SLICE === 0) yield;
  }
}
