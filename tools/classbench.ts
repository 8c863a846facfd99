/**
 * ClassBench rule sets and traces, as the classification literature uses them.
 *
 * Rule line:  @src/len dst/len sport_lo : sport_hi dport_lo : dport_hi proto/mask flags/mask
 * Trace line: src dst sport dport proto flags id   (addresses as unsigned integers)
 *
 * Both become boxes and keys in the IPv4 layout of the rule trie:
 * dimensions (src, dst, proto, sport, dport). The flags column is ignored.
 */
import { readFileSync } from 'node:fs';
import { bias } from '../src/classify/ruleTrie.js';

export const CLASSBENCH_DIMS = 5;

export interface ClassbenchRules {
  count: number;
  lo: Uint32Array;
  hi: Uint32Array;
}

export interface ClassbenchTrace {
  count: number;
  /** Biased keys, CLASSBENCH_DIMS words each, ready for trieLookup. */
  keys: Int32Array;
  /** The rule each header was drawn from (not always the first match). */
  drawnFrom: Int32Array;
}

export class ClassbenchFormatError extends Error {
  readonly code = 'CLASSBENCH_FORMAT';
  override readonly name = 'ClassbenchFormatError';
  constructor(file: string, line: number, what: string) {
    super(`${file}:${line}: ${what}`);
  }
}

function ipv4(text: string, file: string, line: number): number {
  const parts = text.split('.');
  if (parts.length !== 4) throw new ClassbenchFormatError(file, line, `expected an IPv4 address, found '${text}'`);
  let v = 0;
  for (const p of parts) {
    const n = Number(p);
    if (!/^\d{1,3}$/.test(p) || n > 255) throw new ClassbenchFormatError(file, line, `bad IPv4 octet '${p}' in '${text}'`);
    v = v * 256 + n;
  }
  return v;
}

function prefixRange(text: string, file: string, line: number): [number, number] {
  const [addr, lenText] = text.split('/');
  const len = Number(lenText);
  if (!Number.isInteger(len) || len < 0 || len > 32) {
    throw new ClassbenchFormatError(file, line, `expected a prefix length 0-32 in '${text}'`);
  }
  const a = ipv4(addr, file, line);
  const size = 2 ** (32 - len);
  const lo = Math.floor(a / size) * size;
  return [lo, lo + size - 1];
}

function port(text: string, file: string, line: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > 65535) throw new ClassbenchFormatError(file, line, `expected a port 0-65535, found '${text}'`);
  return n;
}

export function parseClassbenchRules(text: string, file = 'rules'): ClassbenchRules {
  const lines = text.split('\n');
  const lo: number[] = [];
  const hi: number[] = [];
  let count = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (raw === '') continue;
    const lineNo = i + 1;
    if (raw[0] !== '@') throw new ClassbenchFormatError(file, lineNo, `a rule line starts with '@'`);
    const f = raw.slice(1).split(/\s+/);
    // src dst slo : shi dlo : dhi proto/mask flags/mask
    if (f.length < 9 || f[3] !== ':' || f[6] !== ':') {
      throw new ClassbenchFormatError(file, lineNo, `expected '@src/len dst/len lo : hi lo : hi proto/mask flags/mask'`);
    }
    const [sLo, sHi] = prefixRange(f[0], file, lineNo);
    const [dLo, dHi] = prefixRange(f[1], file, lineNo);
    const spLo = port(f[2], file, lineNo), spHi = port(f[4], file, lineNo);
    const dpLo = port(f[5], file, lineNo), dpHi = port(f[7], file, lineNo);
    if (spLo > spHi || dpLo > dpHi) throw new ClassbenchFormatError(file, lineNo, 'a port range runs backwards');
    const [protoText, maskText] = f[8].split('/');
    const proto = Number(protoText), mask = Number(maskText);
    let pLo: number, pHi: number;
    if (mask === 0xff) { pLo = pHi = proto & 0xff; }
    else if (mask === 0) { pLo = 0; pHi = 255; }
    else throw new ClassbenchFormatError(file, lineNo, `protocol mask must be 0xFF or 0x00, found '${maskText}'`);
    lo.push(sLo, dLo, pLo, spLo, dpLo);
    hi.push(sHi, dHi, pHi, spHi, dpHi);
    count++;
  }
  return { count, lo: Uint32Array.from(lo), hi: Uint32Array.from(hi) };
}

export function parseClassbenchTrace(text: string, file = 'trace'): ClassbenchTrace {
  const lines = text.split('\n');
  const keys: number[] = [];
  const drawn: number[] = [];
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (raw === '') continue;
    const f = raw.split(/\s+/);
    if (f.length < 5) throw new ClassbenchFormatError(file, i + 1, 'expected `src dst sport dport proto [flags id]`');
    const nums = f.map(Number);
    for (let j = 0; j < 5; j++) {
      if (!Number.isInteger(nums[j]) || nums[j] < 0 || nums[j] > 0xffffffff) {
        throw new ClassbenchFormatError(file, i + 1, `field ${j + 1} is not an unsigned integer: '${f[j]}'`);
      }
    }
    keys.push(bias(nums[0]), bias(nums[1]), bias(nums[4]), bias(nums[2]), bias(nums[3]));
    drawn.push(f.length >= 7 ? nums[6] : -1);
  }
  return { count: drawn.length, keys: Int32Array.from(keys), drawnFrom: Int32Array.from(drawn) };
}

export function readClassbenchRules(path: string): ClassbenchRules {
  return parseClassbenchRules(readFileSync(path, 'utf8'), path);
}

export function readClassbenchTrace(path: string): ClassbenchTrace {
  return parseClassbenchTrace(readFileSync(path, 'utf8'), path);
}
