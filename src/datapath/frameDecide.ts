/**
 * The decision path: what happens to one frame that arrived on one port.
 *
 * What
 *   frameDecide(sw, buf, off, len, arrival, now, explain) returns the frame's
 *   Outcome and, for `forward`, the ports it goes to (sw.dests[0 ..
 *   destCount): one, or for a group packet every receiver). The data
 *   plane calls it for every frame it reads (explain = null); the tracer
 *   builds a frame from a packet description and calls it with an explain
 *   hook that records each step. There is no second implementation of any
 *   step, so the tracer cannot disagree with the data plane.
 *
 * The steps, in order (each may end the frame with a named Outcome)
 *   1. parse: what cannot be read to the end is `malformed` (packet/parse.ts).
 *   2. SpoofGuard, link layer: a vNIC sends from its own MAC only; the uplink
 *      may not send from a vNIC's MAC (`spoof`). A vNIC's frames are untagged
 *      or carry one VLAN its workload declares (`vlans`, none by default),
 *      and a vNIC receives only such frames (`vlan`).
 *   3. destination by MAC: a vNIC's MAC is its port; any other unicast MAC is
 *      behind the uplink; back out of the arrival port is `no_route`. A group
 *      MAC is decided by what the frame is: ARP and ND go to the owner of the
 *      address asked about (4), IP to a group goes to every port whose policy
 *      takes it (5, groupDecide), anything else towards the uplink.
 *   4. ARP (ETHERTYPE 0x0806) and neighbour solicitation/advertisement:
 *      well-formed or `malformed` (Ethernet/IPv4 ARP with nothing but zero
 *      padding after it; ND with hop limit 255, code 0, a unicast target, at
 *      most one source/target link-layer and one nonce option, the right
 *      multicast destination); sender checks (`spoof`: ARP sender and ND
 *      link-layer options are the vNIC's MAC, the sender address and an NA's
 *      target its own; from the uplink no workload address); a per-port rate
 *      limit (`rate_limit`); steered to the one port that owns the address
 *      asked about (else the uplink); and refused between addresses that
 *      drop rules for every service cut off from each other in both
 *      directions (decide.ts resolveAllowed), so a quarantine holds for them
 *      too (`policy`). A probe or gratuitous ARP and
 *      duplicate address detection go to the uplink only.
 *   5. IP: SpoofGuard on the source address (vNIC: its own; uplink: no
 *      workload's); router advertisements and redirects from a vNIC are
 *      `spoof`; router solicitation and MLD must have their hop limit and
 *      are then ordinary ICMPv6 for the policy; a frame for a vNIC must carry
 *      one of its addresses, or a multicast or broadcast one (`misdirected`);
 *      later fragments follow their first fragment (decided again if the
 *      policy changed since); a whole packet to a multicast or broadcast
 *      group is flooded to the ports whose ingress policy takes it, after the
 *      sender's egress point (groupDecide, flow/conntrack.ts ctGroup);
 *      everything else is connection tracking and the policy
 *      (flow/conntrack.ts, decide.ts).
 *   6. Other EtherTypes: the policy's ether/ rules at both ends, else
 *      `ethertype`.
 *
 * Who may call what
 *   frameDecide runs per frame on the packet path: allocation-free, never
 *   throws; the explain hook is called with constant strings only. Switch's
 *   constructor and setPolicy are control path.
 */
import { Conntrack, ctDecided, ctGroup, ctPolicyChanged, ctProcess, type ConntrackOptions } from '../flow/conntrack.js';
import { FragmentTable, fragLookup, fragRemember, fragUpdate } from '../flow/fragments.js';
import { NO_PORT, type FlowTable } from '../flow/flowTable.js';
import { FRAG, PARSE, PKT, PKT_WORDS, parseFrame } from '../packet/parse.js';
import { Outcome, Verdict } from '../packet/verdict.js';
import type { CompiledPolicy } from '../policy/compile.js';
import type { Workload } from '../policy/model.js';
import { spoofAddresses, spoofSourceAllowed, type SpoofAddresses } from '../policy/spoofguard.js';
import { PolicyDecider } from './decide.js';

/** Records the steps of one decision (the tracer); the data plane passes null. */
export interface Explain {
  /** One step: its stage, the outcome it ended in (-1 when the frame went on), and why; `port` when it concerns one receiver of several. */
  step(stage: string, outcome: number, why: string, port?: number): void;
}

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

function word(b: Uint8Array, o: number): number {
  return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3];
}

function say(ex: Explain | null, stage: string, outcome: number, why: string): number {
  if (ex !== null) ex.step(stage, outcome, why);
  return outcome;
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
    this.spoofguard = compiled.policy.spoofguard;
    // The workloads this switch serves: those the compiled policy has points for (this host's), by vNIC.
    const byNic = new Map<string, Workload>();
    for (const [nic, pt] of compiled.points) {
      const w = compiled.policy.workloads.get(pt.egress.workload);
      if (w) byNic.set(nic, w);
    }
    const n = this.portCount;
    let macSlots = 16;
    while (macSlots < n * 4) macSlots *= 2;
    const macTable = new Int32Array(macSlots * 3);
    for (let i = 2; i < macTable.length; i += 3) macTable[i] = -1;
    let addrCount = 0;
    for (let p = 0; p < n; p++) {
      const w = this.isVnic[p] === 1 ? byNic.get(this.names[p]) ?? null : null;
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

/** Destination port by MAC: a vNIC, else the uplink (NO_PORT if none); -1 for broadcast/multicast. */
function destOf(sw: Switch, buf: Uint8Array, off: number): number {
  if ((buf[off] & 1) !== 0) return -1;
  const hi = (buf[off] << 8) | buf[off + 1];
  const lo = (buf[off + 2] << 24) | (buf[off + 3] << 16) | (buf[off + 4] << 8) | buf[off + 5];
  const p = sw.macOwner(hi, lo);
  if (p >= 0) return p;
  return sw.uplink >= 0 ? sw.uplink : NO_PORT;
}

/** The uplink as a destination from port P, or NO_PORT when there is none or P is the uplink. */
function towardsUplink(sw: Switch, P: number): number {
  return sw.uplink >= 0 && sw.uplink !== P ? sw.uplink : NO_PORT;
}

/** May the frame just parsed (its VLAN tags) be sent by or to vNIC port p? Untagged always; one tag if declared; never two. */
function vlanAllowed(sw: Switch, p: number): boolean {
  const count = sw.pkt[PKT.vlanCount];
  if (count === 0) return true;
  const map = sw.vlans[p];
  if (count > 1 || map === null) return false;
  const v = sw.pkt[PKT.vlan];
  return (map[v >> 3] & (1 << (v & 7))) !== 0;
}

/** Where a broadcast question about an address goes: to the port that owns it, else towards the uplink. */
function ownerOrUplink(sw: Switch, owner: number, P: number): number {
  return owner >= 0 && owner !== P ? owner : towardsUplink(sw, P);
}

/** Final checks on the chosen port: it exists and is up, and a vNIC gets only its own VLAN. */
function deliver(sw: Switch, to: number, ex: Explain | null): number {
  if (to < 0 || to === NO_PORT) return say(ex, 'switch', Outcome.no_route, 'there is no port to send it to');
  if (sw.up[to] !== 1) return say(ex, 'switch', Outcome.no_route, 'the port it goes to is down');
  if (sw.isVnic[to] === 1 && !vlanAllowed(sw, to)) return say(ex, 'switch', Outcome.vlan, 'the receiving vNIC does not declare this VLAN');
  sw.dest = to;
  sw.dests[0] = to;
  sw.destCount = 1;
  return Outcome.forward;
}

/**
 * The Outcome of the frame buf[off .. off+len) that arrived on port P; for
 * `forward`, sw.dest is where it goes. Hot path.
 */
export function frameDecide(sw: Switch, buf: Uint8Array, off: number, len: number, P: number, now: number, ex: Explain | null): number {
  const pkt = sw.pkt;
  sw.dest = -1;
  sw.destCount = 0;
  const kind = parseFrame(buf, off, len, pkt);
  if (kind === PARSE.malformed) return say(ex, 'parse', Outcome.malformed, 'the frame cannot be read to the end (truncated, bad lengths, or headers tapwall does not read past)');
  const vnic = sw.isVnic[P] === 1;
  if (sw.spoofguard) {
    const srcHi = (buf[off + 6] << 8) | buf[off + 7];
    const srcLo = (buf[off + 8] << 24) | (buf[off + 9] << 16) | (buf[off + 10] << 8) | buf[off + 11];
    if (vnic) {
      if (srcHi !== sw.macHi[P] || srcLo !== sw.macLo[P]) return say(ex, 'spoofguard', Outcome.spoof, "the source MAC is not the vNIC's own");
    } else if (sw.macOwner(srcHi, srcLo) >= 0) return say(ex, 'spoofguard', Outcome.spoof, "a vNIC's MAC arriving from the uplink");
  }
  if (vnic && !vlanAllowed(sw, P)) return say(ex, 'vlan', Outcome.vlan, 'the frame carries a VLAN tag its workload does not declare');
  const dest = destOf(sw, buf, off);
  if (dest === P) return say(ex, 'switch', Outcome.no_route, 'addressed back to the port it came from');
  if (kind === PARSE.arp) return arpDecide(sw, buf, off, len, P, dest, now, ex);
  if (kind === PARSE.ip) return ipDecide(sw, buf, P, dest, now, ex);
  // Another EtherType: the policy's ether/ rules at both ends, else dropped.
  const target = dest < 0 ? towardsUplink(sw, P) : dest;
  if (target === NO_PORT) return say(ex, 'switch', Outcome.no_route, 'there is no port to send it to');
  const d = sw.decider.decideEther(pkt[PKT.ethertype], P, target, sw.ct.rules);
  if ((d & Verdict.mask) !== Verdict.allow) {
    ctDecided(sw.ct, pkt, d, P, target, Outcome.ethertype, now);
    return say(ex, 'policy', Outcome.ethertype, 'no ether/ rule allows this EtherType at every vNIC it crosses');
  }
  const outcome = deliver(sw, target, ex);
  ctDecided(sw.ct, pkt, d, P, target, outcome, now);
  return outcome;
}

function arpDecide(sw: Switch, buf: Uint8Array, off: number, len: number, P: number, dest: number, now: number, ex: Explain | null): number {
  const pkt = sw.pkt;
  const l3 = pkt[PKT.l3Offset];
  const op = (buf[l3 + 6] << 8) | buf[l3 + 7];
  if (((buf[l3] << 8) | buf[l3 + 1]) !== 1 || ((buf[l3 + 2] << 8) | buf[l3 + 3]) !== 0x0800 || buf[l3 + 4] !== 6 || buf[l3 + 5] !== 4 || (op !== 1 && op !== 2)) {
    return say(ex, 'arp', Outcome.malformed, 'not an Ethernet/IPv4 ARP request or reply');
  }
  // Nothing after the message but zero padding up to the minimum frame (64 bytes with a tag).
  const end = off + len;
  if (end - l3 > 28) {
    if (len > 64) return say(ex, 'arp', Outcome.malformed, 'data after the ARP message');
    for (let k = l3 + 28; k < end; k++) if (buf[k] !== 0) return say(ex, 'arp', Outcome.malformed, 'data after the ARP message');
  }
  const vnic = sw.isVnic[P] === 1;
  const shaHi = (buf[l3 + 8] << 8) | buf[l3 + 9];
  const shaLo = (buf[l3 + 10] << 24) | (buf[l3 + 11] << 16) | (buf[l3 + 12] << 8) | buf[l3 + 13];
  const spa = word(buf, l3 + 14), tpa = word(buf, l3 + 24);
  if (sw.spoofguard) {
    if (vnic) {
      if (shaHi !== sw.macHi[P] || shaLo !== sw.macLo[P]) return say(ex, 'spoofguard', Outcome.spoof, "the ARP sender MAC is not the vNIC's own");
      if (spa !== 0 && !sw.ownsAddress(P, 4, buf, l3 + 14, true)) return say(ex, 'spoofguard', Outcome.spoof, "the ARP sender address is not one of the vNIC's");
    } else if (spa !== 0 && sw.addrOwner(4, buf, l3 + 14, true) >= 0) {
      return say(ex, 'spoofguard', Outcome.spoof, "a workload's address claimed from the uplink");
    }
  }
  if (!sw.resolutionToken(P, now)) return say(ex, 'rate', Outcome.rate_limit, 'above the port\'s ARP and neighbour discovery rate');
  // A probe (sender 0.0.0.0) or a gratuitous ARP concerns the sender's own address: the uplink only.
  if (vnic && sw.spoofguard && spa === 0 && !sw.ownsAddress(P, 4, buf, l3 + 24, true)) return say(ex, 'spoofguard', Outcome.spoof, "an ARP probe for an address that is not the vNIC's");
  if (vnic && (spa === 0 || spa === tpa)) {
    say(ex, 'resolution', -1, 'a probe or gratuitous ARP about its own address: to the uplink only');
    return deliver(sw, towardsUplink(sw, P), ex);
  }
  const owner = sw.addrOwner(4, buf, l3 + 24, true);
  let to: number;
  if (dest >= 0) {
    to = dest;
    if (sw.isVnic[to] === 1 ? owner !== to : owner >= 0) return say(ex, 'switch', Outcome.misdirected, "the ARP target address is not the receiving port's");
  } else to = ownerOrUplink(sw, owner, P);
  if (to === NO_PORT || to < 0) return say(ex, 'switch', Outcome.no_route, 'no port owns the address asked about');
  if (!sw.resolutionAllowed(4, buf, l3 + 14, P, l3 + 24, to)) return say(ex, 'policy', Outcome.policy, 'a drop rule cuts these two addresses off from each other, so they may not resolve each other');
  say(ex, 'resolution', -1, 'ARP between addresses no drop rule cuts off from each other');
  return deliver(sw, to, ex);
}

function isMulticast6(buf: Uint8Array, o: number): boolean {
  return buf[o] === 0xff;
}

/** Is the destination address (at l3 + 16 or + 24) multicast or broadcast? */
function dstIsGroup(pkt: Int32Array): boolean {
  if (pkt[PKT.family] === 4) {
    const d = pkt[PKT.dst];
    return (d >>> 28) === 0xe || d === -1;
  }
  return (pkt[PKT.dst] >>> 24) === 0xff;
}

function ipDecide(sw: Switch, buf: Uint8Array, P: number, dest: number, now: number, ex: Explain | null): number {
  const pkt = sw.pkt;
  const vnic = sw.isVnic[P] === 1;
  const family = pkt[PKT.family];
  if (sw.spoofguard) {
    if (vnic) {
      if (!spoofSourceAllowed(sw.spoof[P], pkt)) return say(ex, 'spoofguard', Outcome.spoof, "the source address is not one of the vNIC's");
    } else if (sw.addrOwner(family, pkt, PKT.src, false) >= 0) {
      return say(ex, 'spoofguard', Outcome.spoof, "a workload's address arriving from the uplink");
    }
  }
  if (family === 6 && pkt[PKT.proto] === 58 && pkt[PKT.fragment] !== FRAG.later) {
    const t = pkt[PKT.icmpType];
    if (pkt[PKT.fragment] === FRAG.first && t >= 130 && t <= 143) return say(ex, 'nd', Outcome.malformed, 'fragmented neighbour discovery or MLD (RFC 6980)');
    if (t === 135 || t === 136) return ndDecide(sw, buf, P, dest, now, ex);
    if (t >= 130 && t <= 137 || t === 143) {
      const l3 = pkt[PKT.l3Offset];
      if (vnic && (t === 134 || t === 137)) return say(ex, 'spoofguard', Outcome.spoof, 'a router advertisement or redirect from a VM (RA guard: a VM is not a router)');
      const hop = buf[l3 + 7];
      const mld = t !== 133 && t !== 134 && t !== 137;
      if (pkt[PKT.icmpCode] !== 0 || hop !== (mld ? 1 : 255)) return say(ex, 'nd', Outcome.malformed, 'neighbour discovery with a hop limit other than 255, MLD other than 1, or a non-zero code');
    }
  }
  // To a group, whole (not fragmented): every port whose policy takes it, not only the uplink.
  if (dest < 0 && pkt[PKT.fragment] === FRAG.none && dstIsGroup(pkt)) return groupDecide(sw, P, now, ex);
  let to = dest >= 0 ? dest : dest === NO_PORT ? NO_PORT : towardsUplink(sw, P);
  if (to === NO_PORT) return say(ex, 'switch', Outcome.no_route, 'there is no port to send it to');
  if (!dstIsGroup(pkt)) {
    if (sw.isVnic[to] === 1) {
      if (!sw.ownsAddress(to, family, pkt, PKT.dst, false)) return say(ex, 'switch', Outcome.misdirected, "sent to a vNIC's MAC with a destination address that is not the vNIC's");
    } else if (sw.addrOwner(family, pkt, PKT.dst, false) >= 0) {
      return say(ex, 'switch', Outcome.misdirected, "a local workload's address sent towards the uplink (it would skip that workload's ingress check)");
    }
  }
  let outcome: number;
  if (pkt[PKT.fragment] === FRAG.later) {
    // No ports to look at: follow the first fragment of the datagram.
    const first = fragLookup(sw.frags, pkt, now);
    if (first < 0) return say(ex, 'fragments', Outcome.invalid_state, 'a later fragment whose first fragment was not seen');
    to = first & 0xffff;
    if (sw.frags.lastGeneration === sw.ct.generation) {
      outcome = first >> 16;
    } else {
      // The policy changed since the first fragment: decide again, with its ports.
      pkt[PKT.sport] = sw.frags.lastPorts >>> 16;
      pkt[PKT.dport] = sw.frags.lastPorts & 0xffff;
      pkt[PKT.fragment] = FRAG.first;
      outcome = ctProcess(sw.ct, pkt, P, to, now);
      pkt[PKT.fragment] = FRAG.later;
      fragUpdate(sw.frags, pkt, outcome, to, sw.ct.generation);
    }
    if (outcome !== Outcome.forward) return say(ex, 'fragments', outcome, 'a later fragment follows its first fragment');
    return deliver(sw, to, ex);
  }
  outcome = ctProcess(sw.ct, pkt, P, to, now);
  if (pkt[PKT.fragment] === FRAG.first) fragRemember(sw.frags, pkt, outcome, to, now, sw.ct.generation);
  if (outcome !== Outcome.forward) return say(ex, 'conntrack', outcome, 'connection tracking and the policy');
  return deliver(sw, to, ex);
}

/** Neighbour solicitation (135) and advertisement (136). */
function ndDecide(sw: Switch, buf: Uint8Array, P: number, dest: number, now: number, ex: Explain | null): number {
  const pkt = sw.pkt;
  const l3 = pkt[PKT.l3Offset], l4 = pkt[PKT.l4Offset], end = pkt[PKT.ipEnd];
  const t = pkt[PKT.icmpType];
  const vnic = sw.isVnic[P] === 1;
  if (buf[l3 + 7] !== 255 || pkt[PKT.icmpCode] !== 0 || end - l4 < 24) return say(ex, 'nd', Outcome.malformed, 'neighbour discovery needs hop limit 255, code 0 and a whole message');
  const target = l4 + 8;
  if (isMulticast6(buf, target)) return say(ex, 'nd', Outcome.malformed, 'a multicast neighbour discovery target');
  const srcUnspecified = (pkt[PKT.src] | pkt[PKT.src + 1] | pkt[PKT.src + 2] | pkt[PKT.src + 3]) === 0;
  // Options: at most one link-layer address and one nonce, nothing else.
  let lla = 0, nonce = 0;
  for (let o = l4 + 24; o < end;) {
    const type = buf[o], olen = buf[o + 1] << 3;
    if (o + 2 > end || olen === 0 || o + olen > end) return say(ex, 'nd', Outcome.malformed, 'a neighbour discovery option with a bad length');
    if (type === (t === 135 ? 1 : 2) && olen === 8 && lla === 0) {
      lla = 1;
      if (sw.spoofguard && vnic) {
        const hi = (buf[o + 2] << 8) | buf[o + 3];
        const lo = (buf[o + 4] << 24) | (buf[o + 5] << 16) | (buf[o + 6] << 8) | buf[o + 7];
        if (hi !== sw.macHi[P] || lo !== sw.macLo[P]) return say(ex, 'spoofguard', Outcome.spoof, "the link-layer address option is not the vNIC's MAC");
      }
    } else if (type === 14 && olen === 8 && nonce === 0 && t === 135) nonce = 1;
    else return say(ex, 'nd', Outcome.malformed, 'a neighbour discovery option other than one link-layer address and one nonce');
    o += olen;
  }
  const dstMulticast = isMulticast6(buf, l3 + 24);
  if (t === 135) {
    if (srcUnspecified && vnic && sw.spoofguard && !sw.ownsAddress(P, 6, buf, target, true)) return say(ex, 'spoofguard', Outcome.spoof, "duplicate address detection for an address that is not the vNIC's");
    if (srcUnspecified && lla !== 0) return say(ex, 'nd', Outcome.malformed, 'duplicate address detection with a link-layer option');
    if (dstMulticast) {
      // Must be the solicited-node group of the target: ff02::1:ffXX:XXXX.
      const d = l3 + 24;
      const ok = buf[d] === 0xff && buf[d + 1] === 0x02 && word(buf, d + 4) === 0 && word(buf, d + 8) === 1 && buf[d + 12] === 0xff &&
        buf[d + 13] === buf[target + 13] && buf[d + 14] === buf[target + 14] && buf[d + 15] === buf[target + 15] && (buf[d + 2] | buf[d + 3]) === 0;
      if (!ok) return say(ex, 'nd', Outcome.malformed, "a solicitation to a multicast group other than the target's solicited-node group");
    } else if (srcUnspecified) return say(ex, 'nd', Outcome.malformed, 'duplicate address detection must go to the solicited-node group');
  } else {
    if (srcUnspecified) return say(ex, 'nd', Outcome.malformed, 'an advertisement from the unspecified address');
    if (dstMulticast) {
      const d = l3 + 24;
      const allNodes = buf[d + 1] === 0x02 && word(buf, d) === (0xff020000 | 0) && word(buf, d + 4) === 0 && word(buf, d + 8) === 0 && word(buf, d + 12) === 1;
      if (!allNodes || (buf[l4 + 4] & 0x40) !== 0) return say(ex, 'nd', Outcome.malformed, 'a multicast advertisement must go to all nodes and not be solicited');
    }
    if (sw.spoofguard) {
      if (vnic && !sw.ownsAddress(P, 6, buf, target, true)) return say(ex, 'spoofguard', Outcome.spoof, "the advertised target is not one of the vNIC's addresses");
      if (!vnic && sw.addrOwner(6, buf, target, true) >= 0) return say(ex, 'spoofguard', Outcome.spoof, "a workload's address advertised from the uplink");
    }
  }
  if (!sw.resolutionToken(P, now)) return say(ex, 'rate', Outcome.rate_limit, 'above the port\'s ARP and neighbour discovery rate');
  // Duplicate address detection and unsolicited advertisements concern the sender's own address: the uplink only.
  if (vnic && (srcUnspecified || (t === 136 && dstMulticast))) {
    say(ex, 'resolution', -1, 'duplicate address detection or an unsolicited advertisement of its own address: to the uplink only');
    return deliver(sw, towardsUplink(sw, P), ex);
  }
  let to: number;
  if (dest >= 0) {
    to = dest;
    // Unicast: the destination address (and a solicitation's target) belongs to the receiving port.
    const owner = sw.addrOwner(6, buf, l3 + 24, true);
    const targetOwner = t === 135 ? sw.addrOwner(6, buf, target, true) : owner;
    if (sw.isVnic[to] === 1 ? owner !== to || targetOwner !== to : owner >= 0 || targetOwner >= 0) {
      return say(ex, 'switch', Outcome.misdirected, "the destination address is not the receiving port's");
    }
  } else if (t === 135) to = ownerOrUplink(sw, sw.addrOwner(6, buf, target, true), P);
  else to = NO_PORT; // a multicast advertisement from the uplink: vNICs learn by asking
  if (to === NO_PORT || to < 0) return say(ex, 'switch', Outcome.no_route, 'no port owns the address asked about');
  // Solicitation: the sender and the target; advertisement: the target (the sender's own) and the destination.
  const a = t === 135 ? l3 + 8 : target, b = t === 135 ? target : l3 + 24;
  if (!(t === 136 && dstMulticast) && !sw.resolutionAllowed(6, buf, a, P, b, to)) {
    return say(ex, 'policy', Outcome.policy, 'a drop rule cuts these two addresses off from each other, so they may not resolve each other');
  }
  say(ex, 'resolution', -1, 'neighbour discovery between addresses no drop rule cuts off from each other');
  return deliver(sw, to, ex);
}

/**
 * An IP packet to a multicast or broadcast group (group MAC and group
 * address), as a switch floods it: to every other port that is up, takes its
 * VLAN and whose ingress policy allows it (flow/conntrack.ts ctGroup: the
 * sender's egress point once, each receiver's ingress point, untracked);
 * from a vNIC the uplink gets it too, by the sender's point alone. Rate
 * limited per sending port (`rate_limit`). The outcome is `forward` when at
 * least one port takes it, `policy` when the sender's point or every
 * receiver's refused it, `no_route` when no port could have. Fragmented
 * group packets are not flooded: they take the unicast path (towards the
 * uplink), since a later fragment follows one port.
 */
function groupDecide(sw: Switch, P: number, now: number, ex: Explain | null): number {
  const dests = sw.dests;
  let count = 0;
  for (let p = 0; p < sw.portCount; p++) {
    if (p === P || sw.up[p] !== 1) continue;
    if (sw.isVnic[p] === 1) {
      if (sw.workloads[p] === null || !vlanAllowed(sw, p)) continue;
    } else if (p !== sw.uplink || sw.isVnic[P] !== 1) continue;
    dests[count++] = p;
  }
  if (count === 0) return say(ex, 'group', Outcome.no_route, 'a multicast or broadcast packet with no other port to take it');
  if (!sw.groupToken(P, now)) return say(ex, 'rate', Outcome.rate_limit, "above the port's multicast and broadcast rate");
  if (ex !== null) sw.groupCandidates.set(dests.subarray(0, count));
  const taken = ctGroup(sw.ct, sw.pkt, P, sw.isVnic, dests, count, sw.groupRefused, now);
  if (ex !== null && taken >= 0) {
    // Each receiver's own answer, for the tracer (the data plane passes null and skips this).
    for (let k = 0; k < count; k++) {
      const r = sw.groupCandidates[k];
      let took = false;
      for (let j = 0; j < taken; j++) if (dests[j] === r) took = true;
      ex.step('group', took ? -1 : Outcome.policy, took ? 'this receiver takes it' : "this receiver's ingress policy refuses it", r);
    }
  }
  if (taken < 0) return say(ex, 'group', Outcome.policy, "the sender's egress policy does not let this multicast or broadcast packet out");
  if (taken === 0) return say(ex, 'group', Outcome.policy, "no receiver's ingress policy takes this multicast or broadcast packet");
  sw.dest = dests[0];
  sw.destCount = taken;
  say(ex, 'group', -1, 'a multicast or broadcast packet: to every port whose policy takes it');
  return Outcome.forward;
}
