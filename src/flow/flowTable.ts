/**
 * The flow table: every tracked connection, found from either direction with
 * one probe, in typed arrays.
 *
 * What
 *   One entry per connection, keyed on the full 5-tuple (IPv4 or IPv6) and
 *   the ports (vNICs or uplink) of both ends: `origPort` is where the first
 *   packet came in, `replyPort` where its replies come in. A packet matches an
 *   entry forwards (same tuple, arrived on origPort) or backwards (swapped
 *   tuple, arrived on replyPort). The hash is symmetric in the two ends, so
 *   both directions probe the same slots.
 *
 * Layout
 *   entries  Int32Array, ENTRY_WORDS (24) words per entry, at most `capacity`
 *            entries; entries never move while live, so an index into it is
 *            a stable handle (owner lists, the sweep, callers).
 *   index    Int32Array of `slots` pairs [signature, entry]: open addressing
 *            with linear probing, `slots` a power of two >= 2 x capacity (load
 *            at most 1/2). Signature 0 marks an empty slot, 1 a deleted one;
 *            a live signature is the hash, any int32 but 0 and 1 (which become 2). A probe looks at
 *            most MAX_PROBE slots, so a lookup costs at most a few cache lines
 *            whatever the table holds; an insert that finds no free slot in
 *            that window is refused and counted.
 *   free     a stack of free entry numbers.
 *   owners   per port: live count, and a list (oldest insert first) through
 *            the entries' NEXT/PREV words, for quota eviction.
 *   Memory: capacity x 96 bytes + slots x 8 bytes: 112 MB for one million.
 *
 * Invariants
 *   - A live entry has exactly one index slot, found by probing from its
 *     hash; `live` = capacity - free stack depth = sum of owner counts.
 *   - No probe path from a key's home slot to its slot crosses an empty
 *     slot (deletion leaves a tombstone, turned back to empty only when the
 *     next slot is empty, which keeps this true).
 *
 * Who may call what
 *   flowLookup runs per packet (hot path: no allocation, no exceptions).
 *   flowInsert and flowRemove run once per new or ended connection.
 *   The connection tracker (conntrack.ts) owns the state and timeout words;
 *   this file only reads them to choose eviction victims and expire entries.
 */

export const ENTRY_WORDS = 24;
export const enum F {
  src = 0, // 4 words
  dst = 4, // 4 words
  /** sport << 16 | dport, in the original direction. */
  ports = 8,
  /** proto | family 6 flag (0x100); -1 when the entry is free. */
  meta = 9,
  /** origPort | replyPort << 16 (0xffff: none). */
  nics = 10,
  /** state | flags << 8 (FLAG below). */
  state = 11,
  /** Rule (order) that decided at the egress point, -1 for the default, -2 when not checked there. */
  ruleOut = 12,
  /** Rule (order) that decided at the ingress point, likewise. */
  ruleIn = 13,
  /** Policy generation the verdict was decided under. */
  generation = 14,
  /** Last packet, in table clock milliseconds. */
  lastSeen = 15,
  packetsOrig = 16,
  packetsReply = 17,
  /** Bytes as two words (low, high) per direction. */
  bytesOrig = 18,
  bytesReply = 20,
  next = 22,
  prev = 23,
}

export const enum FLAG {
  /** The quota owner is replyPort (the connection came in from the uplink). */
  ownerIsReply = 1,
  /** A FIN was seen from the original side / from the reply side. */
  finOrig = 2,
  finReply = 4,
  /** Picked up mid-stream in loose mode. */
  midstream = 8,
  /** The connection was logged when it opened. */
  logged = 16,
}

/** Connection states. The order of the first group matters to nothing; eviction reads STATE_CLASS. */
export const enum CT {
  free = 0,
  synSent = 1,
  synRecv = 2,
  established = 3,
  finWait = 4,
  closing = 5,
  timeWait = 6,
  closed = 7,
  udpNew = 8,
  udpEstablished = 9,
  icmpNew = 10,
  icmpEstablished = 11,
  otherNew = 12,
  otherEstablished = 13,
  /** Denied by a newer policy: its packets are dropped until it expires. */
  cut = 14,
}
export const CT_STATES = 15;
export type CtStateName = keyof typeof CT;
/** State names by number (CT_NAMES[CT.x] === 'x'; a test keeps the two in step). */
export const CT_NAMES: readonly CtStateName[] = [
  'free', 'synSent', 'synRecv', 'established', 'finWait', 'closing', 'timeWait', 'closed',
  'udpNew', 'udpEstablished', 'icmpNew', 'icmpEstablished', 'otherNew', 'otherEstablished', 'cut',
];

/** Eviction classes, most evictable first; `active` entries are never evicted. */
export const enum EVICT { closed = 0, halfOpen = 1, idle = 2, active = 3 }
const STATE_CLASS = new Int8Array(CT_STATES);
STATE_CLASS.fill(EVICT.active);
for (const s of [CT.timeWait, CT.closed, CT.cut]) STATE_CLASS[s] = EVICT.closed;
for (const s of [CT.synSent, CT.synRecv, CT.udpNew, CT.icmpNew, CT.otherNew]) STATE_CLASS[s] = EVICT.halfOpen;

/** Counters the table keeps (flushed to metrics elsewhere). */
export const enum FC {
  inserts = 0,
  removes = 1,
  expired = 2,
  evictedClosed = 3,
  evictedHalfOpen = 4,
  evictedIdle = 5,
  refusedFull = 6,
  refusedQuota = 7,
  refusedProbe = 8,
}
export const FC_COUNT = 9;

export const NO_PORT = 0xffff;
const MAX_PROBE = 64;
const EVICT_SCAN = 64;
const SIG_EMPTY = 0, SIG_DELETED = 1;

export interface FlowTableOptions {
  /** Most connections tracked at once. */
  capacity: number;
  /** Most connections one port (vNIC) may own; defaults to the capacity. */
  perPortQuota?: number;
  /** Port numbers run from 0 to maxPorts - 1 (at most 0xfffe). */
  maxPorts?: number;
  /** An entry unused this long counts as idle for eviction (ms). */
  idleMs?: number;
  /** Memory for the entries (capacity x ENTRY_WORDS words), all zero: e.g. a new shared file mapping (flowState.ts). */
  entries?: Int32Array;
}

export class FlowTable {
  readonly capacity: number;
  readonly slots: number;
  readonly mask: number;
  readonly maxPorts: number;
  /** Most connections one port may own (the data plane re-derives it as vNICs come and go). */
  quota: number;
  readonly idleMs: number;
  readonly entries: Int32Array;
  readonly index: Int32Array;
  readonly freeStack: Int32Array;
  freeTop: number;
  readonly ownerCount: Int32Array;
  readonly ownerHead: Int32Array;
  readonly ownerTail: Int32Array;
  /** Expiry timeout per state, in ms (set by the connection tracker). */
  readonly timeouts: Int32Array;
  readonly counters: Float64Array;
  /** Where the background sweep and the eviction clock continue from. */
  sweepCursor = 0;
  clockHand = 0;
  /** Called before an entry that was logged when it opened is removed (its close goes to the flow log). */
  onRemoveLogged: ((ent: number) => void) | null = null;

  constructor(opts: FlowTableOptions) {
    if (!(opts.capacity >= 1) || opts.capacity > 1 << 26) throw new RangeError(`flow table capacity must be 1 to ${1 << 26}, got ${opts.capacity}`);
    this.capacity = Math.floor(opts.capacity);
    let slots = 16;
    while (slots < this.capacity * 2) slots *= 2;
    this.slots = slots;
    this.mask = slots - 1;
    this.maxPorts = opts.maxPorts ?? 1024;
    if (this.maxPorts < 1 || this.maxPorts >= NO_PORT) throw new RangeError(`maxPorts must be 1 to ${NO_PORT - 1}`);
    this.quota = Math.max(1, Math.floor(opts.perPortQuota ?? this.capacity));
    this.idleMs = opts.idleMs ?? 30_000;
    if (opts.entries && opts.entries.length !== this.capacity * ENTRY_WORDS) throw new RangeError(`flow table entries: ${this.capacity * ENTRY_WORDS} words needed, ${opts.entries.length} given`);
    this.entries = opts.entries ?? new Int32Array(this.capacity * ENTRY_WORDS);
    this.index = new Int32Array(slots * 2);
    this.freeStack = new Int32Array(this.capacity);
    for (let i = 0; i < this.capacity; i++) {
      this.freeStack[i] = this.capacity - 1 - i; // pop gives 0, 1, 2, ...
      this.entries[i * ENTRY_WORDS + F.meta] = -1;
    }
    this.freeTop = this.capacity;
    this.ownerCount = new Int32Array(this.maxPorts);
    this.ownerHead = new Int32Array(this.maxPorts).fill(-1);
    this.ownerTail = new Int32Array(this.maxPorts).fill(-1);
    this.timeouts = new Int32Array(CT_STATES).fill(60_000);
    this.counters = new Float64Array(FC_COUNT);
  }

  get live(): number {
    return this.capacity - this.freeTop;
  }

  /** Bytes held in typed arrays. */
  get bytes(): number {
    return this.entries.byteLength + this.index.byteLength + this.freeStack.byteLength +
      this.ownerCount.byteLength * 3 + this.timeouts.byteLength + this.counters.byteLength;
  }
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** One end of a connection: its address words and port. */
function sideHash(a0: number, a1: number, a2: number, a3: number, port: number): number {
  return fmix(a0 ^ Math.imul(a1, 0x27d4eb2d) ^ Math.imul(a2, 0x165667b1) ^ Math.imul(a3, 0x61c88647) ^ Math.imul(port + 1, 0x9e3779b1));
}

/**
 * Symmetric in the two ends: (src, sport, dst, dport) and (dst, dport, src,
 * sport) hash alike. IPv6 mixes each end on its own and XORs them; IPv4
 * takes a cheaper symmetric mix of its two words.
 */
export function flowHash(k: Int32Array, src: number, dst: number, sport: number, dport: number, proto: number, v6: boolean): number {
  if (!v6) {
    // IPv4: symmetric sums and XORs of the two ends, one mix.
    const a = k[src], b = k[dst];
    const ports = ((sport + dport) << 16) ^ (sport ^ dport);
    return fmix(Math.imul(a ^ b, 0x9e3779b1) ^ ((a + b) | 0) ^ Math.imul(ports + proto, 0x85ebca6b));
  }
  return sideHash(k[src], k[src + 1], k[src + 2], k[src + 3], sport) ^
    sideHash(k[dst], k[dst + 1], k[dst + 2], k[dst + 3], dport) ^
    Math.imul(proto + 1, 0x2545f491);
}

/**
 * Find the connection of a packet. `k` holds the tuple: addresses at `src`
 * and `dst` (4 words each), `proto` and `family`. Returns entry << 1 | 0 for
 * the original direction, entry << 1 | 1 for the reply direction, or -1.
 */
export function flowLookup(
  t: FlowTable, k: Int32Array, src: number, dst: number,
  sport: number, dport: number, proto: number, family: number, arrivalPort: number,
): number {
  const index = t.index, e = t.entries, mask = t.mask;
  const v6 = family === 6;
  const meta = proto | (v6 ? 0x100 : 0);
  const h = flowHash(k, src, dst, sport, dport, proto, v6);
  const sig = h === SIG_EMPTY || h === SIG_DELETED ? 2 : h;
  const fwdPorts = (sport << 16) | dport, revPorts = (dport << 16) | sport;
  const s0 = k[src], d0 = k[dst];
  let slot = h & mask;
  for (let probe = 0; probe < MAX_PROBE; probe++) {
    const s = index[slot << 1];
    if (s === SIG_EMPTY) return -1;
    if (s === sig) {
      const ent = index[(slot << 1) + 1];
      const o = ent * ENTRY_WORDS;
      if (e[o + F.meta] === meta) {
        const ports = e[o + F.ports];
        // Words 1-3 of both addresses are zero in every IPv4 entry and key: compare them for IPv6 only.
        if (ports === fwdPorts && e[o] === s0 && e[o + 4] === d0 && (e[o + F.nics] & 0xffff) === arrivalPort &&
          (!v6 || (e[o + 1] === k[src + 1] && e[o + 2] === k[src + 2] && e[o + 3] === k[src + 3] &&
            e[o + 5] === k[dst + 1] && e[o + 6] === k[dst + 2] && e[o + 7] === k[dst + 3]))) {
          return ent << 1;
        }
        if (ports === revPorts && e[o] === d0 && e[o + 4] === s0 && (e[o + F.nics] >>> 16) === arrivalPort &&
          (!v6 || (e[o + 1] === k[dst + 1] && e[o + 2] === k[dst + 2] && e[o + 3] === k[dst + 3] &&
            e[o + 5] === k[src + 1] && e[o + 6] === k[src + 2] && e[o + 7] === k[src + 3]))) {
          return (ent << 1) | 1;
        }
      }
    }
    slot = (slot + 1) & mask;
  }
  return -1;
}

function ownerOf(t: FlowTable, ent: number): number {
  const o = ent * ENTRY_WORDS;
  const nics = t.entries[o + F.nics];
  return (t.entries[o + F.state] >> 8) & FLAG.ownerIsReply ? nics >>> 16 : nics & 0xffff;
}

/** How evictable an entry is now (EVICT value); expired entries count as closed. */
export function flowEvictClass(t: FlowTable, ent: number, now: number): number {
  const o = ent * ENTRY_WORDS;
  const state = t.entries[o + F.state] & 0xff;
  const idle = (now - t.entries[o + F.lastSeen]) | 0;
  if (idle > t.timeouts[state]) return EVICT.closed;
  const cls = STATE_CLASS[state];
  if (cls === EVICT.active && idle > t.idleMs) return EVICT.idle;
  return cls;
}

/** Remove a live entry: its index slot becomes a tombstone, its number goes back on the free stack. */
export function flowRemove(t: FlowTable, ent: number): void {
  const e = t.entries, index = t.index, mask = t.mask;
  const o = ent * ENTRY_WORDS;
  if (e[o + F.meta] < 0) return;
  if (((e[o + F.state] >> 8) & FLAG.logged) !== 0 && t.onRemoveLogged !== null) t.onRemoveLogged(ent);
  const ports = e[o + F.ports];
  const h = flowHash(e, o + F.src, o + F.dst, ports >>> 16, ports & 0xffff, e[o + F.meta] & 0xff, (e[o + F.meta] & 0x100) !== 0);
  let slot = h & mask;
  for (let probe = 0; probe < MAX_PROBE; probe++) {
    const sig = index[slot << 1];
    if (index[(slot << 1) + 1] === ent && sig !== SIG_EMPTY && sig !== SIG_DELETED) {
      index[slot << 1] = SIG_DELETED;
      // A tombstone followed by an empty slot ends no probe path: clear it, and those before it.
      if (index[((slot + 1) & mask) << 1] === SIG_EMPTY) {
        let s = slot;
        while (index[s << 1] === SIG_DELETED) {
          index[s << 1] = SIG_EMPTY;
          s = (s - 1) & mask;
        }
      }
      break;
    }
    slot = (slot + 1) & mask;
  }
  const owner = ownerOf(t, ent);
  const next = e[o + F.next], prev = e[o + F.prev];
  if (prev >= 0) e[prev * ENTRY_WORDS + F.next] = next; else t.ownerHead[owner] = next;
  if (next >= 0) e[next * ENTRY_WORDS + F.prev] = prev; else t.ownerTail[owner] = prev;
  t.ownerCount[owner]--;
  e[o + F.meta] = -1;
  e[o + F.state] = CT.free;
  t.freeStack[t.freeTop++] = ent;
  t.counters[FC.removes]++;
}

/**
 * Evict the most evictable entry among a bounded set of candidates: the
 * owner's oldest connections when `fromOwner` >= 0, else a stretch of the
 * table under the clock hand. False when every candidate is active.
 */
function evictBest(t: FlowTable, now: number, fromOwner: number): boolean {
  const e = t.entries;
  let best = -1, bestClass: number = EVICT.active, bestIdle = -1;
  if (fromOwner >= 0) {
    // The owner's own connections, oldest first.
    let ent = t.ownerHead[fromOwner];
    for (let n = 0; n < EVICT_SCAN && ent >= 0; n++) {
      const cls = flowEvictClass(t, ent, now);
      const idle = (now - e[ent * ENTRY_WORDS + F.lastSeen]) | 0;
      if (cls < bestClass || (cls === bestClass && cls !== EVICT.active && idle > bestIdle)) { best = ent; bestClass = cls; bestIdle = idle; }
      if (cls === EVICT.closed) break;
      ent = e[ent * ENTRY_WORDS + F.next];
    }
  } else {
    // Anyone's: a clock hand over the entries, a bounded stretch per insert.
    for (let n = 0; n < EVICT_SCAN; n++) {
      const ent = t.clockHand;
      t.clockHand = ent + 1 === t.capacity ? 0 : ent + 1;
      if (e[ent * ENTRY_WORDS + F.meta] < 0) continue;
      const cls = flowEvictClass(t, ent, now);
      const idle = (now - e[ent * ENTRY_WORDS + F.lastSeen]) | 0;
      if (cls < bestClass || (cls === bestClass && cls !== EVICT.active && idle > bestIdle)) { best = ent; bestClass = cls; bestIdle = idle; }
      if (cls === EVICT.closed) break;
    }
  }
  if (best < 0) return false;
  t.counters[bestClass === EVICT.closed ? FC.evictedClosed : bestClass === EVICT.halfOpen ? FC.evictedHalfOpen : FC.evictedIdle]++;
  flowRemove(t, best);
  return true;
}

/** Result of flowInsert when it refuses: -1 table full, -2 owner over quota, -3 no slot in the probe window. */
export const INSERT_FULL = -1, INSERT_QUOTA = -2, INSERT_PROBE = -3;

/**
 * Insert a connection in its original direction; returns the entry number
 * or a negative INSERT_* code (counted). The caller fills state, verdict
 * words and counters. May evict: first the owner's own entries when it is
 * over quota, else anyone's when the table is full, closed before half-open
 * before idle; active connections are never evicted.
 */
export function flowInsert(
  t: FlowTable, k: Int32Array, src: number, dst: number,
  sport: number, dport: number, proto: number, family: number,
  origPort: number, replyPort: number, ownerIsReply: boolean, now: number,
): number {
  const owner = ownerIsReply ? replyPort : origPort;
  if (t.ownerCount[owner] >= t.quota && !evictBest(t, now, owner)) {
    t.counters[FC.refusedQuota]++;
    return INSERT_QUOTA;
  }
  if (t.freeTop === 0 && !evictBest(t, now, -1)) {
    t.counters[FC.refusedFull]++;
    return INSERT_FULL;
  }
  const index = t.index, mask = t.mask;
  const h = flowHash(k, src, dst, sport, dport, proto, family === 6);
  const sig = h === SIG_EMPTY || h === SIG_DELETED ? 2 : h;
  let slot = h & mask, found = -1;
  for (let probe = 0; probe < MAX_PROBE; probe++) {
    const s = index[slot << 1];
    if (s === SIG_EMPTY || s === SIG_DELETED) { found = slot; break; }
    slot = (slot + 1) & mask;
  }
  if (found < 0) {
    t.counters[FC.refusedProbe]++;
    return INSERT_PROBE;
  }
  const ent = t.freeStack[--t.freeTop];
  const e = t.entries;
  const o = ent * ENTRY_WORDS;
  for (let i = 0; i < 4; i++) {
    e[o + F.src + i] = k[src + i];
    e[o + F.dst + i] = k[dst + i];
  }
  e[o + F.ports] = (sport << 16) | dport;
  e[o + F.meta] = proto | (family === 6 ? 0x100 : 0);
  e[o + F.nics] = (origPort & 0xffff) | (replyPort << 16);
  e[o + F.state] = ownerIsReply ? FLAG.ownerIsReply << 8 : 0;
  e[o + F.ruleOut] = -2;
  e[o + F.ruleIn] = -2;
  e[o + F.generation] = 0;
  e[o + F.lastSeen] = now;
  for (let i = F.packetsOrig; i <= F.bytesReply + 1; i++) e[o + i] = 0;
  // Append to the owner's list (oldest first).
  const tail = t.ownerTail[owner];
  e[o + F.prev] = tail;
  e[o + F.next] = -1;
  if (tail >= 0) e[tail * ENTRY_WORDS + F.next] = ent; else t.ownerHead[owner] = ent;
  t.ownerTail[owner] = ent;
  t.ownerCount[owner]++;
  index[found << 1] = sig;
  index[(found << 1) + 1] = ent;
  t.counters[FC.inserts]++;
  return ent;
}

/** Add one packet of `bytes` to an entry's counters in direction `dir` (0 original, 1 reply). */
export function flowCount(t: FlowTable, ent: number, dir: number, bytes: number, now: number): void {
  const e = t.entries;
  const o = ent * ENTRY_WORDS;
  e[o + F.lastSeen] = now;
  e[o + F.packetsOrig + dir]++;
  const lo = o + (dir === 0 ? F.bytesOrig : F.bytesReply);
  const before = e[lo] >>> 0;
  const after = (before + bytes) >>> 0;
  e[lo] = after;
  if (after < before) e[lo + 1]++;
}

/** Bytes counted in one direction (control path). */
export function flowBytes(t: FlowTable, ent: number, dir: number): number {
  const lo = ent * ENTRY_WORDS + (dir === 0 ? F.bytesOrig : F.bytesReply);
  return (t.entries[lo] >>> 0) + (t.entries[lo + 1] >>> 0) * 2 ** 32;
}

/**
 * Walk up to `budget` entries from the sweep cursor and remove those whose
 * state's timeout has passed; calls `visit` for each live one kept (the
 * tracker revalidates stale verdicts there). Returns how many it removed.
 */
export function flowSweep(t: FlowTable, now: number, budget: number, visit: ((ent: number) => void) | null): number {
  const e = t.entries;
  let removed = 0;
  for (let n = 0; n < budget; n++) {
    const ent = t.sweepCursor;
    t.sweepCursor = ent + 1 === t.capacity ? 0 : ent + 1;
    const o = ent * ENTRY_WORDS;
    if (e[o + F.meta] < 0) continue;
    const state = e[o + F.state] & 0xff;
    if (((now - e[o + F.lastSeen]) | 0) > t.timeouts[state]) {
      flowRemove(t, ent);
      t.counters[FC.expired]++;
      removed++;
    } else if (visit !== null) visit(ent);
  }
  return removed;
}

/** Names of the FC counters, by number, as metrics label them. */
export const FLOW_COUNTER_NAMES: readonly string[] = ['inserts', 'removes', 'expired', 'evicted_closed', 'evicted_half_open', 'evicted_idle', 'refused_full', 'refused_quota', 'refused_probe'];

/** Forget every connection with an end at `port` (its vNIC was detached); control path. Returns how many. */
export function flowRemovePort(t: FlowTable, port: number): number {
  const e = t.entries;
  let removed = 0;
  for (let ent = 0; ent < t.capacity; ent++) {
    const o = ent * ENTRY_WORDS;
    if (e[o + F.meta] < 0) continue;
    const nics = e[o + F.nics];
    if ((nics & 0xffff) === port || (nics >>> 16) === port) {
      flowRemove(t, ent);
      removed++;
    }
  }
  return removed;
}
