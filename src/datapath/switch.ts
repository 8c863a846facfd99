/**
 * The switch's state: what the decision path (frameDecide.ts and its
 * stages) reads about each port, and the policy machinery it calls.
 *
 * What
 *   Per port slot, in typed arrays indexed by port number: whether it is a
 *   vNIC or the uplink, up or not, its MAC, the VLANs it may carry, its
 *   SpoofGuard addresses, its ARP/ND and multicast send budgets, the group
 *   packets its policy refused. Per switch: an open-addressed MAC table
 *   (MAC -> vNIC port) and address table (address -> vNIC port), the policy
 *   decider, connection tracking and the fragment table; and scratch the
 *   path writes its answer into (pkt, dest, dests/destCount).
 *
 * Invariants
 *   The MAC and address tables are power-of-two sized, at most half full,
 *   rebuilt whole by setPolicy (control path) and swapped in by reference,
 *   so a frame sees the old tables or the new ones. A port slot keeps its
 *   number while it lives; a vNIC that leaves frees its slot (clearPort).
 *
 * Who may call what
 *   The constructor, setPort, clearPort and setPolicy are control path.
 *   addrOwner, macOwner, ownsAddress, resolutionToken, groupToken and
 *   resolutionAllowed run per frame: allocation-free.
 */
import { Conntrack, ctPolicyChanged, type ConntrackOptions } from '../flow/conntrack.js';
import { FragmentTable } from '../flow/fragments.js';
import type { FlowTable } from '../flow/flowTable.js';
import { PKT_WORDS } from '../packet/parse.js';
import type { CompiledPolicy } from '../policy/compile.js';
import type { Workload } from '../policy/model.js';
import { sameAddresses } from '../policy/addresses.js';
import { PolicyDecider } from './decide.js';
import { spoofAddresses, type SpoofAddresses } from './spoofguard.js';

export interface SwitchPort {
  /** Interface name; for a vNIC, the workload's `nic`. */
  name: string;
  /** Non-null for a workload's vNIC (the workload is found by its nic, so a rename keeps the port); null for the uplink. */
  workload: string | null;
}

export interface SwitchOptions extends ConntrackOptions {
  /** ARP and ND messages per second a port may send, and the burst (the uplink gets UPLINK_RESOLUTION_FACTOR times both). */
  resolutionRate?: number;
  resolutionBurst?: number;
  /** Multicast and broadcast IP packets per second a vNIC may send to other ports, and the burst (the uplink: UPLINK_RESOLUTION_FACTOR times both). */
  groupRate?: number;
  groupBurst?: number;
}

/** The decision path's stages, in order (frameDecide.ts); stageCounts holds [in, dropped] for each. */
export const enum STAGE { parse = 0, link = 1, steering = 2, resolution = 3, ip = 4, ether = 5 }
export const STAGE_NAMES = ['parse', 'link', 'steering', 'resolution', 'ip', 'ether'] as const;

/** Everything behind the uplink shares one port: its resolution budget is this many vNICs' worth. */
const UPLINK_RESOLUTION_FACTOR = 16;
const ADDR_WORDS = 6; // family, four address words, port

/** A token bucket per port (rate per second, burst), in typed arrays; a factor scales one port's (the uplink's). */
class PortBuckets {
  private readonly tokens: Float64Array;
  private readonly refilled: Float64Array;
  private readonly rate: Float64Array;
  private readonly burst: Float64Array;
  constructor(n: number, private readonly baseRate: number, private readonly baseBurst: number) {
    this.tokens = new Float64Array(n);
    this.refilled = new Float64Array(n);
    this.rate = new Float64Array(n);
    this.burst = new Float64Array(n);
  }
  reset(port: number, factor: number): void {
    this.rate[port] = this.baseRate * factor;
    this.burst[port] = this.baseBurst * factor;
    this.tokens[port] = this.burst[port];
    this.refilled[port] = 0;
  }
  /** Take one token at `now` (ms); false when the bucket is empty. Hot path. */
  take(port: number, now: number): boolean {
    const t = Math.min(this.burst[port], this.tokens[port] + ((now - this.refilled[port]) * this.rate[port]) / 1000);
    this.refilled[port] = now;
    if (t < 1) { this.tokens[port] = t; return false; }
    this.tokens[port] = t - 1;
    return true;
  }
}

function macParts(mac: string): [number, number] {
  const b = mac.split(':').map((h) => parseInt(h, 16));
  return [(b[0] << 8) | b[1], ((b[2] << 24) | (b[3] << 16) | (b[4] << 8) | b[5]) | 0];
}

export function word(b: Uint8Array, o: number): number {
  return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3];
}

/**
 * The switch's state: ports (MACs, VLANs, SpoofGuard addresses, rate limits),
 * the policy decider, connection tracking and fragments. Port arrays are
 * typed and indexed by port number; the uplink is a port with no workload.
 */
export class Switch {
  /** Port slots in use (0 .. portCount-1); arrays below have room for `capacity`. */
  portCount: number;
  readonly capacity: number;
  /** Interface name per port slot ('' for a slot no port holds). */
  readonly names: string[];
  readonly uplink: number;
  readonly isVnic: Uint8Array;
  /** 1 while the port can send (the data plane keeps it in step with its ports). */
  readonly up: Uint8Array;
  readonly macHi: Int32Array;
  readonly macLo: Int32Array;
  /** Per port, the VLAN ids it may carry (a 4096-bit map), or null: untagged only. */
  readonly vlans: Array<Uint8Array | null>;
  spoof: SpoofAddresses[];
  /** The workload behind each port (null for the uplink, or a vNIC the policy no longer names). */
  workloads: Array<Workload | null>;
  readonly decider: PolicyDecider;
  readonly ct: Conntrack;
  readonly frags = new FragmentTable();
  readonly pkt = new Int32Array(PKT_WORDS);
  /** Set by frameDecide for `forward`: the port the frame goes to (the first of them for a group packet). */
  dest = -1;
  /** Set by frameDecide for `forward`: every port the frame goes to, dests[0 .. destCount); one but for group packets. */
  readonly dests: Int32Array;
  destCount = 0;
  /** Per port: group packets its ingress policy refused (the sender's other receivers may have taken them). */
  readonly groupRefused: Float64Array;
  /** Per stage (STAGE): frames taken in [s * 2] and dropped [s * 2 + 1]; the rest were passed on. */
  readonly stageCounts = new Float64Array(STAGE_NAMES.length * 2);
  /** Scratch for the tracer: a group packet's candidate receivers before the policy sorted them. */
  readonly groupCandidates: Int32Array;
  spoofguard = true;
  policy: CompiledPolicy;
  private macTable = new Int32Array(0);
  private macMask = 0;
  /** Open-addressed: [family, w0, w1, w2, w3, port] per slot, port -1 when empty. */
  private addrTable = new Int32Array(0);
  private addrMask = 0;
  /** ARP and neighbour discovery a port may send. */
  private readonly resolutionBudget: PortBuckets;
  /** Scratch: the two addresses (four words each) of a resolution check. */
  private readonly addrScratch = new Int32Array(4);
  private readonly addrScratch2 = new Int32Array(4);

  /** Multicast and broadcast packets a port may send. */
  private readonly groupBudget: PortBuckets;

  /**
   * `specs` are the ports at start; `capacity` bounds how many port slots
   * there can ever be (vNICs come and go with setPort/clearPort; the uplink,
   * if any, is among the first specs and stays).
   */
  constructor(compiled: CompiledPolicy, specs: readonly SwitchPort[], table: FlowTable, opts: SwitchOptions = {}, capacity = Math.max(1, specs.length)) {
    const n = Math.max(1, capacity, specs.length);
    this.capacity = n;
    this.portCount = specs.length;
    this.names = Array.from({ length: n }, (_, i) => specs[i]?.name ?? '');
    this.uplink = specs.findIndex((s) => s.workload === null);
    this.isVnic = new Uint8Array(n);
    specs.forEach((s, i) => { this.isVnic[i] = s.workload === null ? 0 : 1; });
    this.up = new Uint8Array(n).fill(1);
    this.macHi = new Int32Array(n).fill(-1);
    this.macLo = new Int32Array(n).fill(-1);
    this.vlans = Array.from({ length: n }, () => null);
    this.spoof = Array.from({ length: n }, () => ({ v4: new Int32Array(0), v6: new Int32Array(0) }));
    this.workloads = Array.from({ length: n }, () => null);
    this.resolutionBudget = new PortBuckets(n, opts.resolutionRate ?? 100, opts.resolutionBurst ?? 200);
    this.groupBudget = new PortBuckets(n, opts.groupRate ?? 1000, opts.groupBurst ?? 2000);
    this.dests = new Int32Array(n);
    this.groupRefused = new Float64Array(n);
    this.groupCandidates = new Int32Array(n);
    for (let i = 0; i < n; i++) this.resetBucket(i);
    this.policy = compiled;
    this.decider = new PolicyDecider(compiled, this.names.map((name, i) => (this.isVnic[i] === 1 ? name : '')));
    this.ct = new Conntrack(table, this.decider, { ...opts, uplinkPort: this.uplink });
    this.applyAddresses(compiled);
  }

  private resetBucket(i: number): void {
    const factor = i === this.uplink ? UPLINK_RESOLUTION_FACTOR : 1;
    this.resolutionBudget.reset(i, factor);
    this.groupBudget.reset(i, factor);
    this.groupRefused[i] = 0;
  }

  /** A vNIC port in slot i (control path); takes effect for addresses and policy at the next setPolicy. */
  setPort(i: number, name: string): void {
    if (i >= this.capacity) throw new RangeError(`port slot ${i} is beyond the switch's ${this.capacity}`);
    this.names[i] = name;
    this.isVnic[i] = 1;
    this.up[i] = 1;
    this.resetBucket(i);
    if (i >= this.portCount) this.portCount = i + 1;
  }

  /** Slot i holds no port any more (its vNIC moved away or was deleted). */
  clearPort(i: number): void {
    this.names[i] = '';
    this.isVnic[i] = 0;
    this.up[i] = 0;
  }

  /** Swap in a new compiled policy (control path): ports, addresses and decider in one step; cached verdicts become stale. */
  setPolicy(compiled: CompiledPolicy): void {
    this.decider.setPolicy(compiled, this.names.map((name, i) => (this.isVnic[i] === 1 ? name : '')));
    this.policy = compiled;
    this.applyAddresses(compiled);
    ctPolicyChanged(this.ct);
  }

  private applyAddresses(compiled: CompiledPolicy): void {
    const spoofguardBefore = this.spoofguard;
    this.spoofguard = compiled.policy.spoofguard;
    // The workloads this switch serves: those the compiled policy has points for (this host's), by vNIC.
    const byNic = new Map<string, Workload>();
    for (const [nic, pt] of compiled.points) {
      const w = compiled.policy.workloads.get(pt.egress.workload);
      if (w) byNic.set(nic, w);
    }
    const n = this.portCount;
    const wanted: Array<Workload | null> = [];
    for (let p = 0; p < n; p++) wanted.push(this.isVnic[p] === 1 ? byNic.get(this.names[p]) ?? null : null);
    // A tag change keeps every vNIC's MAC, addresses and VLANs (its workloads are new objects with new
    // tags): the tables stay, only the workloads are taken.
    let same = this.macTable.length > 0 && spoofguardBefore === this.spoofguard;
    for (let p = 0; p < n && same; p++) {
      const w = wanted[p], was = this.workloads[p];
      same = w === was || (w !== null && was !== null && sameAddresses(w, was) && w.vlans.join() === was.vlans.join());
    }
    if (same) {
      for (let p = 0; p < n; p++) this.workloads[p] = wanted[p];
      return;
    }
    let macSlots = 16;
    while (macSlots < n * 4) macSlots *= 2;
    const macTable = new Int32Array(macSlots * 3);
    for (let i = 2; i < macTable.length; i += 3) macTable[i] = -1;
    let addrCount = 0;
    for (let p = 0; p < n; p++) {
      const w = wanted[p];
      this.workloads[p] = w;
      if (w === null) {
        this.macHi[p] = -1; this.macLo[p] = -1; this.vlans[p] = null;
        this.spoof[p] = { v4: new Int32Array(0), v6: new Int32Array(0) };
        continue;
      }
      [this.macHi[p], this.macLo[p]] = macParts(w.mac);
      let map: Uint8Array | null = null;
      if (w.vlans.length > 0) {
        map = new Uint8Array(512);
        for (const v of w.vlans) map[v >> 3] |= 1 << (v & 7);
      }
      this.vlans[p] = map;
      this.spoof[p] = spoofAddresses(w);
      addrCount += this.spoof[p].v4.length + this.spoof[p].v6.length / 4;
      let slot = Math.imul(this.macLo[p] ^ this.macHi[p], 0x9e3779b1) >>> 16 & (macSlots - 1);
      while (macTable[slot * 3 + 2] >= 0) slot = (slot + 1) & (macSlots - 1);
      macTable[slot * 3] = this.macHi[p]; macTable[slot * 3 + 1] = this.macLo[p]; macTable[slot * 3 + 2] = p;
    }
    let addrSlots = 16;
    while (addrSlots < addrCount * 2) addrSlots *= 2;
    const addrTable = new Int32Array(addrSlots * ADDR_WORDS);
    for (let i = 5; i < addrTable.length; i += ADDR_WORDS) addrTable[i] = -1;
    const put = (family: number, w0: number, w1: number, w2: number, w3: number, port: number) => {
      let slot = addrHash(family, w0, w3) & (addrSlots - 1);
      while (addrTable[slot * ADDR_WORDS + 5] >= 0) slot = (slot + 1) & (addrSlots - 1);
      addrTable.set([family, w0, w1, w2, w3, port], slot * ADDR_WORDS);
    };
    for (let p = 0; p < n; p++) {
      const s = this.spoof[p];
      for (let k = 0; k < s.v4.length; k++) put(4, s.v4[k], 0, 0, 0, p);
      for (let k = 0; k < s.v6.length; k += 4) put(6, s.v6[k], s.v6[k + 1], s.v6[k + 2], s.v6[k + 3], p);
    }
    this.macTable = macTable;
    this.macMask = macSlots - 1;
    this.addrTable = addrTable;
    this.addrMask = addrSlots - 1;
  }

  /** The port whose workload owns the address (family, words at a[o..]), or -1. IPv4 uses one word. */
  addrOwner(family: number, a: Int32Array | Uint8Array, o: number, fromBytes: boolean): number {
    let w0: number, w1 = 0, w2 = 0, w3 = 0;
    if (fromBytes) {
      const b = a as Uint8Array;
      w0 = word(b, o);
      if (family === 6) { w1 = word(b, o + 4); w2 = word(b, o + 8); w3 = word(b, o + 12); }
    } else {
      w0 = a[o];
      if (family === 6) { w1 = a[o + 1]; w2 = a[o + 2]; w3 = a[o + 3]; }
    }
    const t = this.addrTable, mask = this.addrMask;
    for (let slot = addrHash(family, w0, w3) & mask, k = 0; k <= mask; slot = (slot + 1) & mask, k++) {
      const e = slot * ADDR_WORDS;
      if (t[e + 5] < 0) return -1;
      if (t[e] === family && t[e + 1] === w0 && t[e + 2] === w1 && t[e + 3] === w2 && t[e + 4] === w3) return t[e + 5];
    }
    return -1;
  }

  /** The vNIC port with this MAC, or -1. */
  macOwner(hi: number, lo: number): number {
    const t = this.macTable, mask = this.macMask;
    for (let slot = Math.imul(lo ^ hi, 0x9e3779b1) >>> 16 & mask, k = 0; k <= mask; slot = (slot + 1) & mask, k++) {
      const o = slot * 3;
      if (t[o + 2] < 0) return -1;
      if (t[o] === hi && t[o + 1] === lo) return t[o + 2];
    }
    return -1;
  }

  /** Take one ARP/ND token for a port; false when its bucket is empty. */
  resolutionToken(port: number, now: number): boolean {
    return this.resolutionBudget.take(port, now);
  }

  /** Take one group-send token for a port; false when its bucket is empty. */
  groupToken(port: number, now: number): boolean {
    return this.groupBudget.take(port, now);
  }

  /** Is the address (raw words) one of the port's own? */
  ownsAddress(port: number, family: number, a: Int32Array | Uint8Array, o: number, fromBytes: boolean): boolean {
    return this.addrOwner(family, a, o, fromBytes) === port;
  }

  /**
   * May the endpoint at port `pa` with address `a` (bytes at buf[ao]) and the
   * one at port `pb` with address `b` (bytes at buf[bo]) resolve each other?
   * A vNIC's side stands for all of its addresses of the family (a VM resolves
   * with its link-local address what it will reach from its global one).
   */
  resolutionAllowed(family: number, buf: Uint8Array, ao: number, pa: number, bo: number, pb: number): boolean {
    const words = family === 4 ? 1 : 4;
    const sa = this.isVnic[pa] === 1 ? (family === 4 ? this.spoof[pa].v4 : this.spoof[pa].v6) : null;
    const sb = pb >= 0 && this.isVnic[pb] === 1 ? (family === 4 ? this.spoof[pb].v4 : this.spoof[pb].v6) : null;
    const one = this.addrScratch;
    const other = this.addrScratch2, ob = 0;
    if (sb === null) for (let i = 0; i < words; i++) other[ob + i] = word(buf, bo + 4 * i);
    const na = sa === null ? 1 : sa.length / words;
    const nb = sb === null ? 1 : sb.length / words;
    for (let i = 0; i < na; i++) {
      if (sa === null) for (let k = 0; k < words; k++) one[k] = word(buf, ao + 4 * k);
      else for (let k = 0; k < words; k++) one[k] = sa[i * words + k];
      for (let j = 0; j < nb; j++) {
        const bArr = sb === null ? other : sb, bOff = sb === null ? ob : j * words;
        if (this.decider.resolveAllowed(family, one, 0, pa, bArr, bOff, pb)) return true;
      }
    }
    return false;
  }
}

function addrHash(family: number, w0: number, w3: number): number {
  const h = Math.imul(w0 ^ Math.imul(w3, 0x85ebca6b) ^ family, 0x9e3779b1);
  return h ^ (h >>> 16);
}
