/**
 * The data plane: an L2 switch between ports (vNICs and an optional uplink)
 * that runs every frame through SpoofGuard, connection tracking and the
 * policy. It needs no MAC learning: every vNIC's MAC is declared in the
 * policy (and enforced by SpoofGuard), and any other unicast MAC can only be
 * behind the uplink.
 *
 * The per-packet loop (processBatch) runs once per batch read from one port:
 *   parse -> SpoofGuard (source MAC, IP source, ARP sender) -> destination
 *   port by MAC (a workload's port, else the uplink, else no_route) ->
 *   ARP / neighbour discovery: unicast, or a broadcast request delivered only
 *   to the port owning the address asked for (the uplink when none does), so
 *   a VM learns nothing of the others by asking; IP: conntrack + policy;
 *   other EtherTypes: the policy's ether/ rules -> queue on the destination
 *   port -> at the end of the batch, one writeBatch per destination port.
 * Every received frame ends in exactly one Outcome, counted per port in
 * `outcomes` (port * OUTCOME_COUNT + outcome); rx = sum of outcomes.
 *
 * Frames are never copied on the way through: tx queues hold offsets into
 * the arrival port's receive buffer, flushed before the next read.
 * Descriptors are watched by libuv (never a busy loop); one readable event
 * reads at most MAX_BATCHES_PER_EVENT batches, so the API and metrics get
 * their turn.
 */
import { readFileSync } from 'node:fs';
import { portOpen, type PortIo, type PortMode, type PortOptions } from '../io/ports.js';
import { FlowTable, NO_PORT } from '../flow/flowTable.js';
import { Conntrack, RS_COUNT, ctPolicyChanged, ctProcess, ctSweep, type ConntrackOptions } from '../flow/conntrack.js';
import { FlowLog } from '../flow/flowLog.js';
import { FRAG, PARSE, PKT, PKT_WORDS, parseFrame } from '../packet/parse.js';
import { FragmentTable, fragLookup, fragRemember } from '../flow/fragments.js';
import { OUTCOME_COUNT, Outcome } from '../packet/verdict.js';
import type { CompiledPolicy } from '../policy/compile.js';
import type { Workload } from '../policy/model.js';
import { spoofAddresses, spoofSourceAllowed, type SpoofAddresses } from '../policy/spoofguard.js';
import { PolicyDecider } from './decide.js';
import { buildReject, ReplyLimiter } from './reject.js';
import { TypedHistogram } from '../metrics/histogram.js';

/** One batch in BATCH_TIME_SAMPLE is timed: two clock reads per sampled batch, nothing per packet. */
const BATCH_TIME_SAMPLE = 8;

export const BATCH = 64;
export const FRAME_STRIDE = 2048; // a 1514-byte frame and a VLAN tag fit; larger ones are dropped as malformed
/** With virtio-net headers a frame may be a whole TSO segment: 64 KiB and the header. */
export const OFFLOAD_STRIDE = 65536 + 64;
const MAX_BATCHES_PER_EVENT = 16;

export interface PortSpec {
  /** Interface name. */
  name: string;
  mode: PortMode;
  /** The workload whose vNIC this is; null for the uplink. */
  workload: string | null;
}

export interface DataplaneOptions extends ConntrackOptions {
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
}

/** Port counters besides outcomes: [port * PC_COUNT + PC.x]. */
export const enum PC { rxPackets = 0, rxBytes = 1, txPackets = 2, txBytes = 3, txDropped = 4, rxErrors = 5, replies = 6, attaches = 7 }
export const PC_COUNT = 8;

/**
 * A port whose interface is not there (a guest that is off): reads nothing,
 * takes nothing. It stands in until the interface appears and is attached.
 */
class AbsentPort implements PortIo {
  constructor(readonly name: string, readonly mode: PortMode, readonly vnetHdr: number) {}
  start(): void {}
  read(): number { return 0; }
  write(): number { return -6; } // -ENXIO: counted as dropped by flush()
  close(): void {}
}

/** The interface's index if it exists and is administratively up, else -1 (control path). */
function ifindexIfUp(name: string): number {
  try {
    const flags = parseInt(readFileSync(`/sys/class/net/${name}/flags`, 'utf8'), 16);
    if ((flags & 1) === 0) return -1;
    return Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8'));
  } catch {
    return -1;
  }
}

/** How often attached ports look for their interface (gone, back, replaced). */
const ATTACH_CHECK_MS = 500;

class Port {
  readonly stride: number;
  readonly rxBuf: Uint8Array;
  readonly rxOff = new Int32Array(BATCH);
  readonly rxLen = new Int32Array(BATCH);
  readonly txOff = new Int32Array(BATCH * 2);
  readonly txLen = new Int32Array(BATCH * 2);
  txCount = 0;
  /** Where queued frames live: the arrival port's buffer of the batch being handled. */
  txBuf: Uint8Array;
  /** MAC as two numbers (high 16 bits, low 32 bits), -1 when none (the uplink). */
  macHi = -1;
  macLo = -1;
  /** Own IPv4 addresses, and IPv6 addresses (4 words each) including the EUI-64 link-local. */
  spoof: SpoofAddresses = { v4: new Int32Array(0), v6: new Int32Array(0) };
  up = true;
  /** Interface index when attached (attach and pcap modes), -1 when absent. */
  ifindex = -1;
  readonly limiter = new ReplyLimiter();
  constructor(readonly index: number, readonly spec: PortSpec, public io: PortIo, readonly workload: Workload | null) {
    this.stride = io.vnetHdr > 0 ? OFFLOAD_STRIDE : FRAME_STRIDE;
    this.rxBuf = new Uint8Array(BATCH * this.stride);
    this.txBuf = this.rxBuf;
  }
}

function macParts(mac: string): [number, number] {
  const b = mac.split(':').map((h) => parseInt(h, 16));
  return [(b[0] << 8) | b[1], ((b[2] << 24) | (b[3] << 16) | (b[4] << 8) | b[5]) | 0];
}

export class Dataplane {
  readonly ports: Port[] = [];
  readonly decider: PolicyDecider;
  readonly table: FlowTable;
  readonly ct: Conntrack;
  /** Outcome counters: [port * OUTCOME_COUNT + outcome]. */
  readonly outcomes: Float64Array;
  /** Port counters: [port * PC_COUNT + PC.x]. */
  readonly portCounters: Float64Array;
  private readonly pkt = new Int32Array(PKT_WORDS);
  private readonly frags = new FragmentTable();
  private uplink = -1;
  /** [macHi, macLo, port] per slot, port -1 when empty; rebuilt with the policy. */
  private macTable = new Int32Array(0);
  private macMask = 0;
  private sweepTimer: NodeJS.Timeout | null = null;
  private attachTimer: NodeJS.Timeout | null = null;
  /** Frames per batch read (every batch), and seconds to process a batch (sampled). */
  readonly batchSizes = new TypedHistogram(Float64Array.of(1, 2, 4, 8, 16, 32, 64));
  readonly batchSeconds = new TypedHistogram(Float64Array.of(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2));
  private batchSeq = 0;
  private policy: CompiledPolicy;

  constructor(compiled: CompiledPolicy, specs: PortSpec[], private readonly opts: DataplaneOptions = {}) {
    // Frames with virtio-net headers are forwarded with them: every port must carry them (TAP, AF_PACKET; not libpcap).
    if (opts.tap?.offload && specs.some((s) => s.mode === 'pcap')) {
      throw Object.assign(new Error('offload (virtio-net headers) needs TAP or attach ports, not pcap'), { code: 'EOFFLOAD' });
    }
    this.policy = compiled;
    this.table = new FlowTable({ capacity: opts.flowCapacity ?? 262_144, perPortQuota: opts.perPortQuota, maxPorts: Math.max(1, specs.length) });
    this.decider = new PolicyDecider(compiled, specs.map((s) => (s.workload ? compiled.policy.workloads.get(s.workload)?.nic ?? '' : '')));
    this.uplink = specs.findIndex((s) => s.workload === null);
    this.ct = new Conntrack(this.table, this.decider, { ...opts, uplinkPort: this.uplink });
    this.outcomes = new Float64Array(Math.max(1, specs.length) * OUTCOME_COUNT);
    this.portCounters = new Float64Array(Math.max(1, specs.length) * PC_COUNT);
    specs.forEach((spec, i) => {
      const w = spec.workload ? compiled.policy.workloads.get(spec.workload) ?? null : null;
      let io: PortIo;
      let ifindex = -1;
      if (opts.portOpener) io = opts.portOpener(spec);
      else if (spec.mode !== 'tap' && spec.workload !== null && ifindexIfUp(spec.name) < 0) {
        // A guest that is not running: its vNIC is reported absent, and attached when it appears.
        io = new AbsentPort(spec.name, spec.mode, opts.tap?.offload ? 10 : 0);
      } else {
        ifindex = spec.mode === 'tap' ? -1 : ifindexIfUp(spec.name);
        io = portOpen(spec.name, spec.mode, opts.tap);
      }
      const port = new Port(i, spec, io, w);
      port.ifindex = ifindex;
      port.up = !(io instanceof AbsentPort);
      this.ports.push(port);
    });
    this.applyAddresses(compiled);
    this.ct.ruleStats = new Float64Array((compiled.rules.length + 1) * RS_COUNT);
    if (opts.flowLog) this.ct.flowLog = new FlowLog(8192, Math.max(1, specs.length), opts.flowLog.rate, opts.flowLog.burst);
  }

  /** Per-port MACs and SpoofGuard addresses from the policy. */
  private applyAddresses(compiled: CompiledPolicy): void {
    for (const port of this.ports) {
      const w = port.spec.workload ? compiled.policy.workloads.get(port.spec.workload) ?? null : null;
      (port as { workload: Workload | null }).workload = w;
      if (!w) { port.macHi = -1; port.macLo = -1; continue; }
      [port.macHi, port.macLo] = macParts(w.mac);
      port.spoof = spoofAddresses(w);
    }
    let slots = 16;
    while (slots < this.ports.length * 4) slots *= 2;
    const table = new Int32Array(slots * 3);
    for (let i = 2; i < table.length; i += 3) table[i] = -1;
    for (const port of this.ports) {
      if (port.macHi < 0) continue;
      let slot = Math.imul(port.macLo ^ port.macHi, 0x9e3779b1) >>> 16 & (slots - 1);
      while (table[slot * 3 + 2] >= 0) slot = (slot + 1) & (slots - 1);
      table.set([port.macHi, port.macLo, port.index], slot * 3);
    }
    this.macTable = table;
    this.macMask = slots - 1;
  }

  /** Swap in a new compiled policy: cached verdicts become stale and are re-checked. */
  setPolicy(compiled: CompiledPolicy): void {
    // Rule counters follow their rule (section and id), wherever the new policy puts it.
    const old = this.ct.ruleStats, oldRules = this.policy.rules;
    const byId = new Map<string, number>();
    oldRules.forEach((r, i) => byId.set(`${r.section}\0${r.id}`, i + 1));
    const stats = new Float64Array((compiled.rules.length + 1) * RS_COUNT);
    stats.set(old.subarray(0, RS_COUNT));
    compiled.rules.forEach((r, i) => {
      const from = byId.get(`${r.section}\0${r.id}`);
      if (from !== undefined) stats.set(old.subarray(from * RS_COUNT, (from + 1) * RS_COUNT), (i + 1) * RS_COUNT);
    });
    this.ct.ruleStats = stats;
    this.decider.setPolicy(compiled);
    this.policy = compiled;
    this.applyAddresses(compiled);
    ctPolicyChanged(this.ct);
  }

  /** The vNICs (workload ports) this data plane serves. */
  get nics(): string[] {
    return this.ports.filter((p) => p.spec.workload !== null).map((p) => p.spec.name);
  }

  get compiled(): CompiledPolicy {
    return this.policy;
  }

  start(): void {
    for (const port of this.ports) port.io.start((events) => this.onEvent(port, events));
    // Expire and revalidate in the background too, for when no batches arrive.
    this.sweepTimer = setInterval(() => ctSweep(this.ct, this.now(), 4096), 250);
    this.sweepTimer.unref();
    if (!this.opts.portOpener && this.ports.some((p) => p.spec.mode !== 'tap')) {
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
      if (port.spec.mode === 'tap') continue;
      const now = ifindexIfUp(port.spec.name);
      if (port.up && now === port.ifindex && now > 0) continue;
      if (!(port.io instanceof AbsentPort)) {
        port.io.close();
        port.io = new AbsentPort(port.spec.name, port.spec.mode, port.io.vnetHdr);
        if (port.up) this.opts.onError?.(port.spec.name, now < 0 ? 'interface gone: port down' : 'interface replaced: attaching again');
        port.up = false;
      }
      if (now < 0) continue;
      try {
        const io = portOpen(port.spec.name, port.spec.mode, this.opts.tap);
        port.io = io;
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

  private enqueue(dest: Port, src: Port, i: number): void {
    if (dest.txCount === dest.txOff.length) return; // cannot happen: at most BATCH frames, each queued once per port
    dest.txBuf = src.rxBuf;
    dest.txOff[dest.txCount] = src.rxOff[i];
    dest.txLen[dest.txCount] = src.rxLen[i];
    dest.txCount++;
  }

  /** Destination port for a unicast MAC, -1 for broadcast/multicast (flood), NO_PORT when unknown and no uplink. */
  private destOf(buf: Uint8Array, off: number): number {
    if ((buf[off] & 1) !== 0) return -1;
    const hi = (buf[off] << 8) | buf[off + 1];
    const lo = (buf[off + 2] << 24) | (buf[off + 3] << 16) | (buf[off + 4] << 8) | buf[off + 5];
    // The vNICs' MACs in a small open-addressed table: one probe per frame, not one compare per port.
    const t = this.macTable, mask = this.macMask;
    for (let slot = Math.imul(lo ^ hi, 0x9e3779b1) >>> 16 & mask, n = 0; n <= mask; slot = (slot + 1) & mask, n++) {
      const o = slot * 3;
      if (t[o + 2] < 0) break;
      if (t[o] === hi && t[o + 1] === lo) return t[o + 2];
    }
    return this.uplink >= 0 ? this.uplink : NO_PORT;
  }

  /** Read and process what port `index` has waiting, as on a readable event (benchmarks drive this directly). */
  pump(index: number): void {
    this.onEvent(this.ports[index], 1);
  }

  processBatch(port: Port, count: number): void {
    const pkt = this.pkt, buf = port.rxBuf, ports = this.ports;
    const P = port.index;
    const outcomes = this.outcomes, pc = this.portCounters;
    const now = this.now();
    const guard = port.workload !== null && this.policy.policy.spoofguard;
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
      const kind = len > port.stride - hdr || len < 0 ? PARSE.malformed : parseFrame(buf, off, len, pkt);
      if (kind === PARSE.malformed) { outcomes[P * OUTCOME_COUNT + Outcome.malformed]++; continue; }
      // SpoofGuard, source MAC: a vNIC sends only from its own MAC.
      if (guard) {
        const hi = (buf[off + 6] << 8) | buf[off + 7];
        const lo = (buf[off + 8] << 24) | (buf[off + 9] << 16) | (buf[off + 10] << 8) | buf[off + 11];
        if (hi !== port.macHi || lo !== port.macLo) { outcomes[P * OUTCOME_COUNT + Outcome.spoof]++; continue; }
      }
      const dest = this.destOf(buf, off);
      if (dest === P) { outcomes[P * OUTCOME_COUNT + Outcome.no_route]++; continue; } // hairpin: not for us to bounce back
      if (kind === PARSE.arp) {
        if (guard) {
          // ARP sender MAC and IP must be the vNIC's own (0.0.0.0 for a probe).
          const l3 = pkt[PKT.l3Offset];
          const shi = (buf[l3 + 8] << 8) | buf[l3 + 9];
          const slo = (buf[l3 + 10] << 24) | (buf[l3 + 11] << 16) | (buf[l3 + 12] << 8) | buf[l3 + 13];
          const sip = (buf[l3 + 14] << 24) | (buf[l3 + 15] << 16) | (buf[l3 + 16] << 8) | buf[l3 + 17];
          let ok = shi === port.macHi && slo === port.macLo && sip === 0;
          if (!ok && shi === port.macHi && slo === port.macLo) for (let k = 0; k < port.spoof.v4.length; k++) if (port.spoof.v4[k] === sip) ok = true;
          if (!ok) { outcomes[P * OUTCOME_COUNT + Outcome.spoof]++; continue; }
        }
        // A broadcast request goes only to the port that owns the address asked for (or the uplink).
        outcome = dest === -1 && buf[pkt[PKT.l3Offset] + 7] === 1 ? this.directTo(port, i, this.ownerOf4(buf, pkt[PKT.l3Offset] + 24)) : this.forwardL2(port, i, dest);
      } else if (kind === PARSE.ip) {
        if (guard && !spoofSourceAllowed(port.spoof, pkt)) { outcomes[P * OUTCOME_COUNT + Outcome.spoof]++; continue; }
        const icmp6 = pkt[PKT.family] === 6 && pkt[PKT.proto] === 58;
        const t = pkt[PKT.icmpType];
        const frag = pkt[PKT.fragment];
        // IP broadcast and multicast go only towards the uplink, and only as the policy allows.
        const target = dest === -1 ? (this.uplink >= 0 && this.uplink !== P ? this.uplink : NO_PORT) : dest;
        if (frag === FRAG.later) {
          // No ports to look at: follow the first fragment of the datagram.
          const first = fragLookup(this.frags, pkt, now);
          if (first < 0) outcome = Outcome.invalid_state;
          else {
            outcome = first >> 16;
            const to = first & 0xffff;
            if (outcome === Outcome.forward) {
              if (to < ports.length) this.enqueue(ports[to], port, i); else outcome = Outcome.no_route;
            }
          }
        } else if (icmp6 && ((t >= 133 && t <= 137) || (t >= 130 && t <= 132) || t === 143)) {
          // Neighbour discovery and multicast listener messages: link-local plumbing, past SpoofGuard only.
          if (guard && (t === 134 || t === 137)) outcome = Outcome.spoof; // RA guard: a VM is not a router
          else if (dest !== -1) outcome = this.forwardL2(port, i, dest);
          else if (t === 135) outcome = this.directTo(port, i, this.ownerOf6(buf, pkt[PKT.l4Offset] + 8)); // solicitation: to the target's owner
          else if (t === 136) outcome = this.forwardL2(port, i, dest); // unsolicited advertisement: everyone
          else outcome = this.directTo(port, i, -1); // router solicitation, MLD: towards the uplink

        } else if (target === NO_PORT) {
          outcome = Outcome.no_route;
        } else {
          outcome = ctProcess(this.ct, pkt, P, target, now);
          if (outcome === Outcome.forward) this.enqueue(ports[target], port, i);
          else if (outcome === Outcome.reject || outcome === Outcome.cut) this.reply(port, i, pkt, now);
          if (frag === FRAG.first) fragRemember(this.frags, pkt, outcome, target, now);
        }
      } else {
        // Another EtherType: the policy's ether/ rules at both ends, else dropped.
        const target = dest < 0 ? (this.uplink >= 0 && this.uplink !== P ? this.uplink : NO_PORT) : dest;
        if (target === NO_PORT) outcome = Outcome.no_route;
        else if (this.decider.decideEther(pkt[PKT.ethertype], P, target)) {
          this.enqueue(ports[target], port, i);
          outcome = Outcome.forward;
        } else outcome = Outcome.ethertype;
      }
      outcomes[P * OUTCOME_COUNT + outcome]++;
    }
    this.flush();
    ctSweep(this.ct, now, 64);
    if (timed) this.batchSeconds.observe((performance.now() - started) / 1000);
  }

  /** The port whose workload owns the IPv4 address at buf[o..o+4), or -1. */
  private ownerOf4(buf: Uint8Array, o: number): number {
    const ip = (buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3];
    const ports = this.ports;
    for (let p = 0; p < ports.length; p++) {
      const v4 = ports[p].spoof.v4;
      for (let k = 0; k < v4.length; k++) if (v4[k] === ip) return p;
    }
    return -1;
  }

  /** The port whose workload owns the IPv6 address at buf[o..o+16), or -1. */
  private ownerOf6(buf: Uint8Array, o: number): number {
    const w0 = (buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3];
    const w1 = (buf[o + 4] << 24) | (buf[o + 5] << 16) | (buf[o + 6] << 8) | buf[o + 7];
    const w2 = (buf[o + 8] << 24) | (buf[o + 9] << 16) | (buf[o + 10] << 8) | buf[o + 11];
    const w3 = (buf[o + 12] << 24) | (buf[o + 13] << 16) | (buf[o + 14] << 8) | buf[o + 15];
    const ports = this.ports;
    for (let p = 0; p < ports.length; p++) {
      const v6 = ports[p].spoof.v6;
      for (let k = 0; k < v6.length; k += 4) if (v6[k] === w0 && v6[k + 1] === w1 && v6[k + 2] === w2 && v6[k + 3] === w3) return p;
    }
    return -1;
  }

  /** Deliver to one port (the owner of an address), else to the uplink, else nowhere. */
  private directTo(port: Port, i: number, owner: number): number {
    const to = owner >= 0 && owner !== port.index ? owner : this.uplink >= 0 && this.uplink !== port.index ? this.uplink : -1;
    if (to < 0 || !this.ports[to].up) return Outcome.no_route;
    this.enqueue(this.ports[to], port, i);
    return Outcome.forward;
  }

  /** ARP and ND: to the destination port, or flooded to every other port that is up. */
  private forwardL2(port: Port, i: number, dest: number): number {
    if (dest === NO_PORT) return Outcome.no_route;
    if (dest >= 0) { this.enqueue(this.ports[dest], port, i); return Outcome.forward; }
    const ports = this.ports;
    for (let p = 0; p < ports.length; p++) if (p !== port.index && ports[p].up) this.enqueue(ports[p], port, i);
    return Outcome.forward;
  }

  private reply(port: Port, i: number, pkt: Int32Array, now: number): void {
    if (!port.limiter.take(now)) return;
    const hdr = port.io.vnetHdr;
    const reply = buildReject(port.rxBuf, port.rxOff[i] + hdr, port.rxLen[i] - hdr, pkt);
    if (!reply) return;
    // A zeroed virtio-net header: a whole frame with its checksums done.
    const frame = hdr > 0 ? new Uint8Array(hdr + reply.length) : reply;
    if (hdr > 0) frame.set(reply, hdr);
    const r = port.io.write(frame, Int32Array.of(0), Int32Array.of(frame.length), 1);
    if (r === 1) this.portCounters[port.index * PC_COUNT + PC.replies]++;
  }

  private flush(): void {
    for (const dest of this.ports) {
      if (dest.txCount === 0) continue;
      const count = dest.txCount;
      dest.txCount = 0;
      if (!dest.up) { this.portCounters[dest.index * PC_COUNT + PC.txDropped] += count; continue; }
      const sent = dest.io.write(dest.txBuf, dest.txOff, dest.txLen, count);
      const base = dest.index * PC_COUNT;
      if (sent < 0) {
        this.portCounters[base + PC.txDropped] += count;
        this.opts.onError?.(dest.spec.name, `write failed: errno ${-sent}`);
        continue;
      }
      this.portCounters[base + PC.txPackets] += sent;
      for (let k = 0; k < sent; k++) this.portCounters[base + PC.txBytes] += dest.txLen[k];
      // EAGAIN / ENOBUFS: what the kernel did not take is dropped and counted, not retried in a loop.
      if (sent < count) this.portCounters[base + PC.txDropped] += count - sent;
    }
  }
}
