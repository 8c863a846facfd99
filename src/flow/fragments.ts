/**
 * IP fragments: a non-first fragment carries no ports, so it follows the
 * outcome of the first fragment of its datagram, which was decided normally.
 *
 * What
 *   A small table of recent first fragments, keyed on (family, protocol,
 *   source, destination, identification), holding the outcome and the
 *   destination port chosen for the first fragment, its ports, and the
 *   policy generation it was decided under. A later fragment whose first
 *   fragment was decided under an older policy is decided again by the
 *   caller (with the first fragment's ports), like any stale connection.
 *
 * Layout
 *   Int32Array, FRAG_WORDS per entry, power-of-two entries, linear probing
 *   over at most 8 slots. Entries are never deleted: an entry older than the
 *   reassembly timeout is dead, and an insert overwrites a dead entry, or the
 *   oldest entry in its window. Fixed memory; no sweep.
 *
 * Who may call what
 *   fragRemember after a first fragment's outcome; fragLookup for a later
 *   fragment. Both are hot-path: allocation-free, no exceptions.
 */
import { PKT } from '../packet/parse.js';

const FRAG_WORDS = 15;
const enum FW { meta = 0, src = 1, dst = 5, id = 9, result = 10, seen = 11, used = 12, ports = 13, generation = 14 }
const WINDOW = 8;

export class FragmentTable {
  readonly entries: Int32Array;
  readonly mask: number;
  /** Set by fragLookup on a hit: the first fragment's ports (sport << 16 | dport) and policy generation. */
  lastPorts = 0;
  lastGeneration = 0;
  /** Reassembly timeout: Linux waits 30 s for the rest of a datagram. */
  constructor(readonly capacity = 4096, readonly timeoutMs = 30_000) {
    let n = 16;
    while (n < capacity) n *= 2;
    this.entries = new Int32Array(n * FRAG_WORDS);
    this.mask = n - 1;
  }
}

function fragHash(pkt: Int32Array): number {
  let h = Math.imul(pkt[PKT.fragmentId] ^ pkt[PKT.src], 0x9e3779b1) ^ Math.imul(pkt[PKT.dst] + pkt[PKT.proto], 0x85ebca6b);
  h ^= Math.imul(pkt[PKT.src + 3] ^ pkt[PKT.dst + 3], 0xc2b2ae35);
  h ^= h >>> 15;
  return Math.imul(h, 0x27d4eb2d) ^ (h >>> 13);
}

function matches(e: Int32Array, o: number, pkt: Int32Array, meta: number): boolean {
  if (e[o + FW.used] === 0 || e[o + FW.meta] !== meta || e[o + FW.id] !== pkt[PKT.fragmentId]) return false;
  for (let i = 0; i < 4; i++) {
    if (e[o + FW.src + i] !== pkt[PKT.src + i] || e[o + FW.dst + i] !== pkt[PKT.dst + i]) return false;
  }
  return true;
}

/** Remember the outcome (0..255), destination port (0..0xffff), ports and policy generation of a first fragment. */
export function fragRemember(t: FragmentTable, pkt: Int32Array, outcome: number, destPort: number, now: number, generation: number): void {
  const e = t.entries;
  const meta = pkt[PKT.proto] | (pkt[PKT.family] << 8);
  let slot = fragHash(pkt) & t.mask;
  let victim = slot, victimAge = -1;
  for (let n = 0; n < WINDOW; n++) {
    const o = slot * FRAG_WORDS;
    if (matches(e, o, pkt, meta)) { victim = slot; break; }
    const age = e[o + FW.used] === 0 ? 0x7fffffff : (now - e[o + FW.seen]) | 0;
    if (age > victimAge) { victim = slot; victimAge = age; }
    slot = (slot + 1) & t.mask;
  }
  const o = victim * FRAG_WORDS;
  e[o + FW.meta] = meta;
  for (let i = 0; i < 4; i++) { e[o + FW.src + i] = pkt[PKT.src + i]; e[o + FW.dst + i] = pkt[PKT.dst + i]; }
  e[o + FW.id] = pkt[PKT.fragmentId];
  e[o + FW.result] = (outcome << 16) | (destPort & 0xffff);
  e[o + FW.seen] = now;
  e[o + FW.used] = 1;
  e[o + FW.ports] = (pkt[PKT.sport] << 16) | (pkt[PKT.dport] & 0xffff);
  e[o + FW.generation] = generation;
}

/** The entry offset of the packet's datagram, or -1. */
function fragFind(t: FragmentTable, pkt: Int32Array): number {
  const e = t.entries;
  const meta = pkt[PKT.proto] | (pkt[PKT.family] << 8);
  let slot = fragHash(pkt) & t.mask;
  for (let n = 0; n < WINDOW; n++) {
    const o = slot * FRAG_WORDS;
    if (matches(e, o, pkt, meta)) return o;
    slot = (slot + 1) & t.mask;
  }
  return -1;
}

/** Update the verdict of a remembered datagram after it was decided again. */
export function fragUpdate(t: FragmentTable, pkt: Int32Array, outcome: number, destPort: number, generation: number): void {
  const o = fragFind(t, pkt);
  if (o < 0) return;
  t.entries[o + FW.result] = (outcome << 16) | (destPort & 0xffff);
  t.entries[o + FW.generation] = generation;
}

/** For a later fragment: (outcome << 16) | destPort of its first fragment, or -1 if unknown or expired. */
export function fragLookup(t: FragmentTable, pkt: Int32Array, now: number): number {
  const o = fragFind(t, pkt);
  if (o < 0) return -1;
  const e = t.entries;
  if (((now - e[o + FW.seen]) | 0) > t.timeoutMs) return -1;
  e[o + FW.seen] = now; // a datagram still arriving stays alive
  t.lastPorts = e[o + FW.ports];
  t.lastGeneration = e[o + FW.generation];
  return e[o + FW.result];
}
