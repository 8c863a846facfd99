/**
 * Connections carried from elsewhere: from a VM's old host (live migration)
 * and from this host's previous process (a restart).
 *
 * What
 *   flowsExport lists a vNIC's connections as plain records (FlowRecord, for
 *   JSON through etcd); flowsImport takes them in for the vNIC on its new
 *   host; flowsResume takes in what the previous process left in the flow
 *   state file. Every carried entry keeps its connection state and flags
 *   but not its verdict: it is inserted at generation 0, so its next packet
 *   is decided by the policy in force here, as after any policy change (a
 *   record cannot let through what the policy does not allow).
 *
 * Who may call what: the data plane, in the control path.
 */
import { CT, CT_STATES, ENTRY_WORDS, F, FLAG, NO_PORT, flowInsert, type FlowTable } from '../flow/flowTable.js';
import type { PreviousFlows } from '../flow/flowState.js';
import type { Switch } from './switch.js';

/**
 * A connection as another host can take it over (live migration): the
 * 5-tuple in the original direction, which end is the migrating VM, its
 * state and rules. Plain data (JSON through etcd).
 */
export interface FlowRecord {
  family: 4 | 6;
  proto: number;
  src: number[];
  dst: number[];
  sport: number;
  dport: number;
  /** state | flags << 8, as the flow table keeps it. */
  state: number;
  /** True when the VM is the original side (it opened the connection). */
  vmIsOrig: boolean;
  ruleOut: number;
  ruleIn: number;
}

/** The connections with an end at port i. */
export function flowsExport(t: FlowTable, i: number): FlowRecord[] {
  const e = t.entries;
  const out: FlowRecord[] = [];
  for (let ent = 0; ent < t.capacity; ent++) {
    const o = ent * ENTRY_WORDS;
    const meta = e[o + F.meta];
    if (meta < 0) continue;
    const nics = e[o + F.nics];
    const orig = nics & 0xffff, reply = nics >>> 16;
    if (orig !== i && reply !== i) continue;
    const state = e[o + F.state];
    if ((state & 0xff) === CT.cut) continue; // nothing to carry over
    const ports = e[o + F.ports];
    out.push({
      family: (meta & 0x100) !== 0 ? 6 : 4, proto: meta & 0xff,
      src: [0, 1, 2, 3].map((k) => e[o + F.src + k] >>> 0), dst: [0, 1, 2, 3].map((k) => e[o + F.dst + k] >>> 0),
      sport: ports >>> 16, dport: ports & 0xffff, state, vmIsOrig: orig === i, ruleOut: e[o + F.ruleOut], ruleIn: e[o + F.ruleIn],
    });
  }
  return out;
}

/**
 * Take over connections handed from a VM's old host, for its vNIC here
 * (control path). The other end's port is the vNIC that owns its address,
 * else the uplink. Each entry is stale (decided under no generation of
 * this host), so its next packet is checked against the policy in force
 * here, like after any policy change. Returns how many were taken.
 */
export function flowsImport(t: FlowTable, sw: Switch, i: number, flows: FlowRecord[], now: number): number {
  const key = new Int32Array(8);
  let taken = 0;
  for (const f of flows) {
    if (!(f.family === 4 || f.family === 6) || !Array.isArray(f.src) || !Array.isArray(f.dst)) continue;
    for (let k = 0; k < 4; k++) { key[k] = f.src[k] | 0; key[4 + k] = f.dst[k] | 0; }
    const peerOff = f.vmIsOrig ? 4 : 0;
    const owner = sw.addrOwner(f.family, key, peerOff, false);
    const peer = owner >= 0 ? owner : sw.uplink >= 0 ? sw.uplink : NO_PORT;
    if (peer === NO_PORT || peer === i) continue;
    const orig = f.vmIsOrig ? i : peer, reply = f.vmIsOrig ? peer : i;
    if (insertCarried(t, sw, key, 0, 4, f.sport & 0xffff, f.dport & 0xffff, f.proto & 0xff, f.family, orig, reply, f.state, f.ruleOut | 0, f.ruleIn | 0, now) >= 0) taken++;
  }
  return taken;
}

/**
 * Take up the connections the previous process left in the flow state
 * file (control path: after the first policy has attached the ports,
 * before forwarding starts). An entry comes back when both its ports are
 * here under the same interface names; it keeps its connection state and
 * counters, but not its verdict: its next packet is decided by the policy
 * in force, as after any policy change. Cut, closed and TIME_WAIT entries
 * are left behind. Call once; later calls find nothing.
 */
export function flowsResume(t: FlowTable, sw: Switch, prev: PreviousFlows, slotOf: ReadonlyMap<string, number>, now: number): { resumed: number; left: number; from: number | null } {
  const old = prev.entries, e = t.entries;
  let resumed = 0, left = 0;
  for (let ent = 0; ent < prev.capacity; ent++) {
    const o = ent * ENTRY_WORDS;
    const meta = old[o + F.meta];
    if (meta < 0) continue;
    const state = old[o + F.state];
    const s = state & 0xff;
    if (s === CT.free || s === CT.cut || s === CT.closed || s === CT.timeWait || s >= CT_STATES) { left++; continue; }
    const nics = old[o + F.nics];
    const orig = slotOf.get(prev.ports[nics & 0xffff] ?? '') ?? -1;
    const reply = slotOf.get(prev.ports[nics >>> 16] ?? '') ?? -1;
    if (orig < 0 || reply < 0 || orig === reply) { left++; continue; }
    const ports = old[o + F.ports];
    const family = (meta & 0x100) !== 0 ? 6 : 4;
    const n = insertCarried(t, sw, old, o + F.src, o + F.dst, ports >>> 16, ports & 0xffff, meta & 0xff, family, orig, reply, state, old[o + F.ruleOut], old[o + F.ruleIn], now);
    if (n < 0) { left++; continue; }
    // Its counters come along too (this process's flow log reports them when it closes).
    const no = n * ENTRY_WORDS;
    for (let w = F.packetsOrig; w <= F.bytesReply + 1; w++) e[no + w] = old[o + w];
    resumed++;
  }
  return { resumed, left, from: prev.pid };
}

/**
 * Insert a connection another process decided (a VM's old host, or this
 * host before a restart): its state and flags carry over, but not who owns
 * the quota or whether it was logged (this process's), and not its verdict
 * (generation 0: its next packet is decided by the policy in force).
 * Returns the entry, or a negative INSERT_* code. Control path.
 */
function insertCarried(
  t: FlowTable, sw: Switch, key: Int32Array, src: number, dst: number, sport: number, dport: number, proto: number, family: number,
  orig: number, reply: number, state: number, ruleOut: number, ruleIn: number, now: number,
): number {
  const ent = flowInsert(t, key, src, dst, sport, dport, proto, family, orig, reply, orig === sw.uplink, now);
  if (ent < 0) return ent;
  const o = ent * ENTRY_WORDS, e = t.entries;
  e[o + F.state] = (e[o + F.state] & (FLAG.ownerIsReply << 8)) | (state & ~((FLAG.ownerIsReply | FLAG.logged) << 8));
  e[o + F.generation] = 0;
  e[o + F.ruleOut] = ruleOut;
  e[o + F.ruleIn] = ruleIn;
  return ent;
}
