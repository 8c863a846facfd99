/**
 * IP addresses and prefixes as the compiler needs them: a family and four
 * unsigned 32-bit words (IPv4 uses word 0 only), plus a prefix length.
 * IPv4 parsing and validation are ip-cidr's. IPv6 text goes through the
 * WHATWG URL host parser that Node.js carries (every RFC 4291 form,
 * embedded IPv4 included, normalised to RFC 5952 text), since ip-cidr reads
 * `64:ff9b::10.0.0.1` as `10.0.0.1`; a zone index (`%eth0`) is refused, as
 * it names no address a policy could hold. This file turns the answers into
 * words and does prefix arithmetic.
 */
import IPCIDR from 'ip-cidr';
import { isIPv6 } from 'node:net';
import type { Workload } from './model.js';

export type Family = 4 | 6;

export interface Prefix {
  family: Family;
  /** Network address, host bits zero; IPv4 in words[0]. */
  words: [number, number, number, number];
  len: number;
  /** Canonical text, e.g. `10.0.0.0/24`, `fd00:1::/48`. */
  text: string;
}

function familyOf(text: string): Family {
  return text.includes(':') ? 6 : 4;
}

function wordsOf(big: bigint, family: Family): [number, number, number, number] {
  if (family === 4) return [Number(big & 0xffffffffn) >>> 0, 0, 0, 0];
  return [
    Number((big >> 96n) & 0xffffffffn) >>> 0,
    Number((big >> 64n) & 0xffffffffn) >>> 0,
    Number((big >> 32n) & 0xffffffffn) >>> 0,
    Number(big & 0xffffffffn) >>> 0,
  ];
}

/** The four words of an IPv6 address in any RFC 4291 text form, or null. */
function ipv6Words(text: string): [number, number, number, number] | null {
  if (!isIPv6(text) || text.includes('%')) return null;
  let host: string;
  try {
    host = new URL(`http://[${text}]/`).hostname;
  } catch {
    return null;
  }
  // Canonical now: lower-case hex groups, at most one '::', no embedded IPv4.
  const inner = host.slice(1, -1);
  const [head, tail] = inner.includes('::') ? inner.split('::') : [inner, null];
  const h = head === '' ? [] : head.split(':');
  const t = tail === null || tail === '' ? [] : tail.split(':');
  const groups = tail === null ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  if (groups.length !== 8) return null;
  const g = groups.map((x) => parseInt(x, 16));
  return [((g[0] << 16) | g[1]) >>> 0, ((g[2] << 16) | g[3]) >>> 0, ((g[4] << 16) | g[5]) >>> 0, ((g[6] << 16) | g[7]) >>> 0];
}

/**
 * The address of canonical dotted decimal text[from, to): four octets 0-255
 * without leading zeros. The unsigned value, or -1. Read by character codes,
 * with nothing allocated: a group of a million addresses is read twice per
 * address (the prefix, then its host bits).
 */
function canonicalV4(text: string, from: number, to: number): number {
  let addr = 0, i = from;
  for (let octet = 0; octet < 4; octet++) {
    if (octet > 0) {
      if (i >= to || text.charCodeAt(i) !== 46) return -1; // '.'
      i++;
    }
    const start = i;
    let v = 0;
    while (i < to && i - start < 4) {
      const c = text.charCodeAt(i);
      if (c < 48 || c > 57) break;
      v = v * 10 + (c - 48);
      i++;
    }
    const digits = i - start;
    if (digits === 0 || digits > 3 || v > 255 || (digits > 1 && text.charCodeAt(start) === 48)) return -1;
    addr = addr * 256 + v;
  }
  return i === to ? addr : -1;
}

/**
 * The common case of a large policy, read without ip-cidr's big-integer
 * arithmetic (a million /32s took a minute): canonical dotted decimal and an
 * optional length 0-32 without leading zeros; the same answer as ip-cidr's,
 * as a test checks. Text already canonical is kept as it is.
 */
function parseCanonicalV4(text: string): Prefix | null {
  const slash = text.indexOf('/');
  const addr = canonicalV4(text, 0, slash < 0 ? text.length : slash);
  if (addr < 0) return null;
  let len = 32;
  if (slash >= 0) {
    const digits = text.length - slash - 1;
    const c0 = text.charCodeAt(slash + 1) - 48, c1 = text.charCodeAt(slash + 2) - 48;
    if (digits === 1 && c0 >= 0 && c0 <= 9) len = c0;
    else if (digits === 2 && c0 >= 1 && c0 <= 3 && c1 >= 0 && c1 <= 9 && c0 * 10 + c1 <= 32) len = c0 * 10 + c1;
    else return null;
  }
  const net = len === 0 ? 0 : (addr & (0xffffffff << (32 - len))) >>> 0;
  const words: [number, number, number, number] = [net, 0, 0, 0];
  const canonical = net === addr ? (slash >= 0 ? text : `${text}/32`) : `${addressText(4, words)}/${len}`;
  return { family: 4, words, len, text: canonical };
}

/** Parse `a.b.c.d`, an IPv6 address, or either with `/len`. Returns null if invalid. */
export function parsePrefix(text: string): Prefix | null {
  if (typeof text !== 'string' || text.trim() !== text || text === '') return null;
  return parseCanonicalV4(text) ?? parsePrefixGeneral(text);
}

/** Every accepted form, through ip-cidr and the URL parser (exported for the test that compares the two paths). */
export function parsePrefixGeneral(text: string): Prefix | null {
  const family = familyOf(text);
  if (family === 6) {
    const slash = text.indexOf('/');
    const lenText = slash < 0 ? '128' : text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > 128) return null;
    const words = ipv6Words(slash < 0 ? text : text.slice(0, slash));
    if (words === null) return null;
    const p = prefixTruncate({ family: 6, words, len: 128, text: '' }, Number(lenText));
    return p;
  }
  const max = family === 4 ? 32 : 128;
  let cidr = text;
  if (!text.includes('/')) cidr = `${text}/${max}`;
  else {
    const len = text.slice(text.indexOf('/') + 1);
    if (!/^\d{1,3}$/.test(len) || Number(len) > max) return null;
  }
  if (!IPCIDR.isValidCIDR(cidr)) return null;
  if (family === 4 && !/^\d{1,3}(\.\d{1,3}){3}\//.test(cidr)) return null; // no shorthand like 10.1/8
  const c = new IPCIDR(cidr);
  const start = c.start<bigint>({ type: 'bigInteger' });
  const len = Number(cidr.slice(cidr.indexOf('/') + 1));
  const words = wordsOf(BigInt(start as unknown as bigint), family);
  const startText = c.start<string>();
  return { family, words, len, text: `${startText}/${len}` };
}

/** True if the text had host bits set (10.0.0.5/24), which we accept but warn about. */
export function hasHostBits(text: string, p: Prefix): boolean {
  const slash = text.indexOf('/');
  if (slash < 0) return false;
  if (p.family === 4) {
    const addr = canonicalV4(text, 0, slash);
    if (addr >= 0) return addr !== p.words[0];
  }
  const addr = parsePrefix(text.slice(0, slash));
  if (!addr) return false;
  return addr.words.some((w, i) => w !== p.words[i]);
}

/** Low and high bound of a prefix in word `i` (unsigned 32-bit). */
export function prefixWordRange(p: Prefix, i: number): [number, number] {
  const bitsBefore = i * 32;
  const inWord = p.len - bitsBefore;
  if (inWord >= 32) return [p.words[i], p.words[i]];
  if (inWord <= 0) return [0, 0xffffffff];
  const span = 2 ** (32 - inWord);
  return [p.words[i], p.words[i] + span - 1];
}

/** Does prefix a contain prefix b (same family, a.len <= b.len, same leading bits)? */
export function prefixContains(a: Prefix, b: Prefix): boolean {
  if (a.family !== b.family || a.len > b.len) return false;
  for (let i = 0; i < 4; i++) {
    const [lo, hi] = prefixWordRange(a, i);
    const w = b.words[i];
    if (w < lo || w > hi) return false;
  }
  return true;
}

export function prefixEquals(a: Prefix, b: Prefix): boolean {
  return a.family === b.family && a.len === b.len && a.words.every((w, i) => w === b.words[i]);
}

/**
 * The smallest equivalent list: the union of the prefixes as merged
 * intervals, each cut into the fewest aligned blocks (what dropping held
 * prefixes and merging sibling pairs repeatedly arrives at), IPv4 first,
 * ascending. Linear after one sort of the starts (a million /32s in well
 * under a second).
 */
export function prefixAggregate(list: readonly Prefix[]): Prefix[] {
  const out: Prefix[] = [];
  const iv4 = intervals4(list);
  for (let i = 0; i < iv4.count; i++) blocks4(iv4.starts[i], iv4.ends[i], out);
  const v6 = list.filter((p) => p.family === 6);
  if (v6.length > 0) {
    const iv6 = intervals6(v6);
    for (let i = 0; i < iv6.starts.length; i++) blocks6(iv6.starts[i], iv6.ends[i], out);
  }
  return out;
}

/**
 * IPv4 prefixes of a list as sorted intervals [start, end], overlapping ones
 * merged (prefixes overlap only by one holding the other), and touching ones
 * too unless `touching` is false (then each interval is one of the prefixes).
 */
export function intervals4(list: readonly Prefix[], touching = true): { starts: Float64Array; ends: Float64Array; count: number } {
  const join = touching ? 1 : 0;
  let n = 0;
  for (const p of list) if (p.family === 4) n++;
  // start * 64 + length sorts by start (then length) and stays exact below 2^53.
  const packed = new Float64Array(n);
  let k = 0;
  for (const p of list) if (p.family === 4) packed[k++] = (p.words[0] >>> 0) * 64 + p.len;
  packed.sort();
  const starts = new Float64Array(n), ends = new Float64Array(n);
  let count = 0;
  for (let i = 0; i < n; i++) {
    const len = packed[i] % 64, a = (packed[i] - len) / 64, b = a + 2 ** (32 - len) - 1;
    if (count > 0 && a <= ends[count - 1] + join) { if (b > ends[count - 1]) ends[count - 1] = b; } else { starts[count] = a; ends[count] = b; count++; }
  }
  return { starts, ends, count };
}

function bigOf(words: readonly number[]): bigint {
  return (BigInt(words[0] >>> 0) << 96n) | (BigInt(words[1] >>> 0) << 64n) | (BigInt(words[2] >>> 0) << 32n) | BigInt(words[3] >>> 0);
}

/** IPv6 prefixes of a list as sorted, merged intervals (BigInt); `touching` as for intervals4. */
export function intervals6(list: readonly Prefix[], touching = true): { starts: bigint[]; ends: bigint[] } {
  const join = touching ? 1n : 0n;
  const iv = list.filter((p) => p.family === 6).map((p): [bigint, bigint] => { const a = bigOf(p.words); return [a, a + (1n << BigInt(128 - p.len)) - 1n]; });
  iv.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  const starts: bigint[] = [], ends: bigint[] = [];
  for (const [a, b] of iv) {
    const n = ends.length;
    if (n > 0 && a <= ends[n - 1] + join) { if (b > ends[n - 1]) ends[n - 1] = b; } else { starts.push(a); ends.push(b); }
  }
  return { starts, ends };
}

/** [a, b] as the fewest aligned IPv4 blocks, appended to out. */
function blocks4(a: number, b: number, out: Prefix[]): void {
  while (a <= b) {
    let size = 1, len = 32;
    while (len > 0 && a % (size * 2) === 0 && a + size * 2 - 1 <= b) { size *= 2; len--; }
    const words: [number, number, number, number] = [a, 0, 0, 0];
    out.push({ family: 4, words, len, text: `${addressText(4, words)}/${len}` });
    a += size;
  }
}

function blocks6(a: bigint, b: bigint, out: Prefix[]): void {
  while (a <= b) {
    let size = 1n, len = 128;
    while (len > 0 && a % (size * 2n) === 0n && a + size * 2n - 1n <= b) { size *= 2n; len--; }
    const words: [number, number, number, number] = [0, 1, 2, 3].map((i) => Number((a >> BigInt(96 - 32 * i)) & 0xffffffffn)) as [number, number, number, number];
    out.push({ family: 6, words, len, text: prefixText(6, words, len) });
    a += size;
  }
}

export function prefixTruncate(p: Prefix, len: number): Prefix {
  const words: [number, number, number, number] = [0, 0, 0, 0];
  for (let i = 0; i < 4; i++) {
    const inWord = len - i * 32;
    if (inWord >= 32) words[i] = p.words[i];
    else if (inWord > 0) words[i] = (p.words[i] & ~((2 ** (32 - inWord)) - 1)) >>> 0;
  }
  return { family: p.family, words, len, text: prefixText(p.family, words, len) };
}

export function prefixText(family: Family, words: readonly number[], len: number): string {
  return `${addressText(family, words)}/${len}`;
}

export function addressText(family: Family, words: readonly number[]): string {
  if (family === 4) {
    const w = words[0] >>> 0;
    return `${w >>> 24}.${(w >>> 16) & 255}.${(w >>> 8) & 255}.${w & 255}`;
  }
  let big = 0n;
  for (let i = 0; i < 4; i++) big = (big << 32n) | BigInt(words[i] >>> 0);
  const hex: string[] = [];
  for (let i = 7; i >= 0; i--) hex.push(((big >> BigInt(i * 16)) & 0xffffn).toString(16));
  // Compress the longest run of zero groups, as RFC 5952 prescribes.
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (hex[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && hex[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** The EUI-64 link-local address of a MAC, as four words. */
export function linkLocalOf(mac: string): [number, number, number, number] {
  const b = mac.split(':').map((h) => parseInt(h, 16));
  b[0] ^= 0x02;
  const w2 = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | 0xff) >>> 0;
  const w3 = ((0xfe << 24) | (b[3] << 16) | (b[4] << 8) | b[5]) >>> 0;
  return [0xfe800000, 0, w2, w3];
}

/** Do two workloads have the same MAC and addresses (what their prefixes are made of)? */
export function sameAddresses(a: Workload, b: Workload): boolean {
  return a.mac === b.mac && a.ips.length === b.ips.length && a.ips.every((p, i) => p.text === b.ips[i].text);
}

/** Every address of a workload as a /128 or /32 prefix: its ips and the link-local address of its MAC. */
export function workloadPrefixes(w: Workload): Prefix[] {
  const ll = linkLocalOf(w.mac);
  const text = addressText(6, ll);
  if (w.ips.some((p) => p.family === 6 && p.words.every((x, i) => x === ll[i]))) return w.ips;
  return [...w.ips, { family: 6, words: ll, len: 128, text: `${text}/128` }];
}
