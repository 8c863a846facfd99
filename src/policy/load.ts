/**
 * Reading a policy document (YAML or JSON) into the validated model.
 *
 * The `yaml` library parses both and keeps every node's source range, so each
 * problem points at the line and column of the value (or, for unknown and
 * duplicate keys, of the key) it is about. Validation goes through the whole
 * document and collects every problem before it returns.
 */
import { readFileSync } from 'node:fs';
import { load as yamlLoad, CORE_SCHEMA } from 'js-yaml';
import { nativeIfBuilt } from '../io/native.js';
import { LineCounter, parseDocument, isMap, isSeq, isScalar, isPair, visit, type Alias, type Document, type Node } from 'yaml';
import { parsePrefix, hasHostBits, type Prefix } from './addresses.js';
import { formatPath, PolicyError, type PathSegment, type PolicyProblem, type Severity } from './errors.js';
import { ACTIONS, rulePath, WorkloadIndex, type Action, type AddressRef, type Group, type Policy, type Rule, type Section, type ServiceRef, type Workload } from './model.js';
import { findShadowedRules } from './shadow.js';
import { parseServiceObject, parseServiceSpec, RESERVED_SERVICE_NAMES, ServiceSyntaxError, type ServiceAtom } from './services.js';

export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]*$/;
const NIC_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Collects problems and knows where each path sits in the source text. */
class Checker {
  readonly problems: PolicyProblem[] = [];
  constructor(
    readonly file: string,
    readonly doc: Document.Parsed | null,
    readonly lines: LineCounter | null,
  ) {}

  private nodeAt(path: readonly PathSegment[], atKey: boolean): Node | null {
    if (!this.doc) return null;
    let node: unknown = this.doc.contents;
    let last: Node | null = (node as Node) ?? null;
    for (let i = 0; i < path.length; i++) {
      const seg = path[i];
      if (isMap(node)) {
        const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(seg));
        if (!pair) return last;
        if (i === path.length - 1 && atKey) return pair.key as Node;
        node = pair.value;
      } else if (isSeq(node) && typeof seg === 'number') {
        node = node.items[seg];
      } else return last;
      if (node && typeof node === 'object' && 'range' in (node as object)) last = node as Node;
    }
    return last;
  }

  locate(path: readonly PathSegment[], atKey = false): { line: number; column: number } {
    const node = this.nodeAt(path, atKey);
    if (node?.range && this.lines) {
      const pos = this.lines.linePos(node.range[0]);
      return { line: pos.line, column: pos.col };
    }
    return { line: 1, column: 1 };
  }

  report(severity: Severity, code: string, path: readonly PathSegment[], message: string, atKey = false): void {
    const { line, column } = this.locate(path, atKey);
    this.problems.push({ severity, code, file: this.file, line, column, path: formatPath(path), message });
  }

  error(code: string, path: readonly PathSegment[], message: string, atKey = false): void {
    this.report('error', code, path, message, atKey);
  }

  warn(code: string, path: readonly PathSegment[], message: string): void {
    this.report('warning', code, path, message);
  }

  get failed(): boolean {
    return this.problems.some((p) => p.severity === 'error');
  }
}

function describe(v: Json | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return `the string '${v}'`;
  return `${typeof v} ${typeof v === 'number' ? String(v) : JSON.stringify(v)}`;
}

function isObject(v: Json | undefined): v is { [k: string]: Json } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Report keys outside `allowed`; returns the object or null when it is not a mapping. */
function mapping(c: Checker, v: Json | undefined, path: PathSegment[], allowed: readonly string[] | null, what: string): { [k: string]: Json } | null {
  if (!isObject(v)) {
    c.error('wrong-type', path, `expected ${what} (a mapping), found ${describe(v)}`);
    return null;
  }
  if (allowed === null) return v;
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) {
      c.error('unknown-key', [...path, k], `unknown key '${k}' (expected one of: ${allowed.join(', ')})`, true);
    }
  }
  return v;
}

function str(c: Checker, v: Json | undefined, path: PathSegment[], what: string, re?: RegExp): string | null {
  if (typeof v !== 'string') {
    c.error('wrong-type', path, `expected ${what}, found ${describe(v)}`);
    return null;
  }
  if (re && !re.test(v)) {
    c.error('bad-name', path, `'${v}' is not a valid ${what}`);
    return null;
  }
  return v;
}

function bool(c: Checker, v: Json | undefined, path: PathSegment[], fallback: boolean): boolean {
  if (v === undefined) return fallback;
  if (typeof v !== 'boolean') {
    c.error('wrong-type', path, `expected true or false, found ${describe(v)}`);
    return fallback;
  }
  return v;
}

/**
 * A string of a list, with where it stands (made only when a message needs
 * it: most never do); index -1 for a single string given instead of a list.
 */
class ListItem {
  constructor(public value: string, private readonly list: PathSegment[], public index: number) {}
  get path(): PathSegment[] {
    return this.index < 0 ? this.list : [...this.list, this.index];
  }
}

/**
 * A list of strings one at a time (a single string is accepted as a list of
 * one), through one item moved along the list: `visit` reads it at once and
 * keeps it only as a copy. A group of a million CIDRs would otherwise be a
 * million items held in a list while they are read, which every
 * young-generation collection copies.
 */
function strEach(c: Checker, v: Json | undefined, path: PathSegment[], what: string, visit: (item: ListItem) => void): void {
  if (v === undefined) return;
  if (typeof v === 'string') { visit(new ListItem(v, path, -1)); return; }
  if (!Array.isArray(v)) {
    c.error('wrong-type', path, `expected a list of ${what}, found ${describe(v)}`);
    return;
  }
  const cursor = new ListItem('', path, 0);
  for (let i = 0; i < v.length; i++) {
    const item = v[i];
    if (typeof item !== 'string') { c.error('wrong-type', [...path, i], `expected ${what}, found ${describe(item)}`); continue; }
    cursor.value = item;
    cursor.index = i;
    visit(cursor);
  }
}

/**
 * The list at its length. An array filled by push keeps room for 16 more
 * (a 1-item list is 184 bytes, 56 when fitted); a policy keeps five such
 * lists per rule or workload, a quarter of a 10,000-rule model's memory,
 * which every collection then copies and every reload builds again.
 */
function fitted<T>(list: readonly T[]): T[] {
  return list.length === 0 ? [] : list.slice();
}

/** A list of strings, kept (strEach's items, each copied). */
function strList(c: Checker, v: Json | undefined, path: PathSegment[], what: string): ListItem[] {
  const out: ListItem[] = [];
  strEach(c, v, path, what, (it) => out.push(new ListItem(it.value, path, it.index)));
  return out;
}

function prefixOf(c: Checker, item: ListItem, allowLength: boolean): Prefix | null {
  const text = item.value;
  const p = parsePrefix(text);
  if (!p || (!allowLength && text.includes('/'))) {
    c.error('bad-address', item.path, allowLength
      ? `expected an IPv4 or IPv6 address or CIDR (like 10.0.0.0/24 or fd00::/64), found '${text}'`
      : `expected an IPv4 or IPv6 address (like 10.0.0.11 or fd00::11), found '${text}'`);
    return null;
  }
  if (allowLength && hasHostBits(text, p)) {
    c.warn('host-bits', item.path, `'${text}' has host bits set; it is read as ${p.text}`);
  }
  return p;
}

const TOP_KEYS = ['version', 'default', 'spoofguard', 'workloads', 'groups', 'services', 'sections'] as const;
const WORKLOAD_KEYS = ['nic', 'mac', 'ips', 'tags', 'vlans', 'host', 'comment'] as const;
const GROUP_KEYS = ['tags', 'workloads', 'cidrs', 'groups', 'comment'] as const;
const SECTION_KEYS = ['name', 'rules', 'comment'] as const;
const RULE_KEYS = ['id', 'from', 'to', 'services', 'action', 'appliedTo', 'log', 'stateless', 'disabled', 'comment'] as const;

function action(c: Checker, v: Json | undefined, path: PathSegment[]): Action | null {
  if (typeof v === 'string' && (ACTIONS as readonly string[]).includes(v)) return v as Action;
  c.error(v === undefined ? 'missing-key' : 'bad-value', path, `expected one of allow, drop, reject, found ${describe(v)}`);
  return null;
}

function readWorkloads(c: Checker, raw: Json | undefined): Map<string, Workload> {
  const out = new Map<string, Workload>();
  if (raw === undefined) return out;
  const m = mapping(c, raw, ['workloads'], null, 'workloads by name');
  if (!m) return out;
  const byNic = new Map<string, string>();
  const byMac = new Map<string, string>();
  const byIp = new Map<string, string>();
  for (const name of Object.keys(m)) {
    const body = m[name];
    const path: PathSegment[] = ['workloads', name];
    if (!NAME_RE.test(name)) c.error('bad-name', path, `'${name}' is not a valid workload name (letters, digits, _ . : -)`, true);
    const w = mapping(c, body, path, WORKLOAD_KEYS, `workload '${name}'`);
    if (!w) continue;
    const nic = typeof w.nic === 'string' && NIC_RE.test(w.nic) ? w.nic : w.nic === undefined
      ? (c.error('missing-key', path, `workload '${name}' has no 'nic' (the interface name of its vNIC)`), null)
      : str(c, w.nic, [...path, 'nic'], 'interface name (at most 15 characters: letters, digits, _ . -)', NIC_RE);
    let mac: string | null = null;
    if (w.mac === undefined) c.error('missing-key', path, `workload '${name}' has no 'mac'`);
    else if (typeof w.mac !== 'string' || !MAC_RE.test(w.mac)) {
      c.error('bad-mac', [...path, 'mac'], `expected a MAC address like 02:00:00:00:00:01, found ${describe(w.mac)}`);
    } else if (parseInt(w.mac.slice(0, 2), 16) & 1) {
      c.error('bad-mac', [...path, 'mac'], `'${w.mac}' is a multicast address; a vNIC needs a unicast MAC`);
    } else mac = w.mac.toLowerCase();
    let ips = quickAddresses(w.ips, byIp, name);
    if (ips === null) {
      ips = [];
      for (const ip of strList(c, w.ips, [...path, 'ips'], 'IP addresses')) {
        const p = prefixOf(c, ip, false);
        if (!p) continue;
        const key = p.text;
        const owner = byIp.get(key);
        if (owner !== undefined) c.error('duplicate-ip', ip.path, `address ${ip.value} is already claimed by workload '${owner}'`);
        else byIp.set(key, name);
        ips.push(p);
      }
    }
    let tags = quickNames(w.tags);
    if (tags === null) {
      const valid: string[] = [];
      for (const t of strList(c, w.tags, [...path, 'tags'], 'tags')) {
        if (!NAME_RE.test(t.value)) c.error('bad-name', t.path, `'${t.value}' is not a valid tag (letters, digits, _ . : -)`);
        else valid.push(t.value);
      }
      tags = valid;
    }
    if (nic) {
      // Interface names are per host: two hypervisors may each have a tap0.
      const hostName = typeof w.host === 'string' ? w.host : '';
      const owner = byNic.get(`${hostName}/${nic}`);
      if (owner !== undefined) c.error('duplicate-nic', [...path, 'nic'], `vNIC '${nic}'${hostName ? ` on host ${hostName}` : ''} is already claimed by workload '${owner}'`);
      else byNic.set(`${hostName}/${nic}`, name);
    }
    if (mac) {
      const owner = byMac.get(mac);
      if (owner !== undefined) c.error('duplicate-mac', [...path, 'mac'], `MAC ${mac} is already claimed by workload '${owner}'`);
      else byMac.set(mac, name);
    }
    const vlans: number[] = [];
    if (w.vlans !== undefined) {
      if (!Array.isArray(w.vlans)) c.error('bad-type', [...path, 'vlans'], `expected a list of VLAN ids 1-4094, found ${describe(w.vlans)}`);
      else {
        w.vlans.forEach((v, i) => {
          if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 4094) {
            c.error('bad-value', [...path, 'vlans', i], `expected a VLAN id 1-4094 (an 802.1Q tag this workload's frames may carry), found ${describe(v)}`);
          } else vlans.push(v);
        });
      }
    }
    const host = w.host === undefined ? undefined : str(c, w.host, [...path, 'host'], 'a host name (letters, digits, _ . : -)', NAME_RE) ?? undefined;
    out.set(name, host === undefined ? { name, nic: nic ?? '', mac: mac ?? '', ips: fitted(ips), tags: fitted(tags), vlans } : { name, nic: nic ?? '', mac: mac ?? '', ips: fitted(ips), tags: fitted(tags), vlans, host });
  }
  return out;
}

/*
 * A workload's lists read the common way first, making nothing but what the
 * model keeps: a list of strings that all pass. Null for anything else (not
 * a list, an item that fails), which is then read again item by item the way
 * that says where each problem stands. A policy's first load runs all this
 * cold, before the JIT has seen it: at 10,000 workloads the item-by-item way
 * took 25 ms more there.
 */

/** A list of valid tags (names), as written (the model's line fits a copy); null when it is anything else. */
function quickNames(v: Json | undefined): readonly string[] | null {
  if (v === undefined) return [];
  if (!Array.isArray(v)) return null;
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    if (typeof x !== 'string' || !NAME_RE.test(x)) return null;
  }
  return v as string[];
}

/**
 * A list of addresses (no lengths) that no workload has claimed, claimed for
 * `owner` in `byIp` once all of them are; null, and nothing claimed, when it
 * is anything else.
 */
function quickAddresses(v: Json | undefined, byIp: Map<string, string>, owner: string): Prefix[] | null {
  if (v === undefined) return [];
  if (!Array.isArray(v)) return null;
  const out: Prefix[] = [];
  for (let i = 0; i < v.length; i++) {
    const text = v[i];
    if (typeof text !== 'string' || text.includes('/')) return null;
    const p = parsePrefix(text);
    if (p === null || byIp.has(p.text)) return null;
    for (let j = 0; j < i; j++) if (out[j].text === p.text) return null;
    out.push(p);
  }
  for (let i = 0; i < out.length; i++) byIp.set(out[i].text, owner);
  return out;
}

function readGroups(c: Checker, raw: Json | undefined, workloads: Map<string, Workload>): Map<string, Group> {
  const out = new Map<string, Group>();
  if (raw === undefined) return out;
  const m = mapping(c, raw, ['groups'], null, 'groups by name');
  if (!m) return out;
  for (const [name, body] of Object.entries(m)) {
    const path: PathSegment[] = ['groups', name];
    if (!NAME_RE.test(name)) c.error('bad-name', path, `'${name}' is not a valid group name (letters, digits, _ . : -)`, true);
    if (name === 'any') c.error('reserved-name', path, `'any' is reserved: it already means every address`, true);
    const g = mapping(c, body, path, GROUP_KEYS, `group '${name}'`);
    if (!g) continue;
    const group: Group = { name, tagsAnyOf: [], tagsAllOf: [], workloads: [], cidrs: [], groups: [] };
    if (g.tags !== undefined) {
      // A tag that is no valid tag name can never be carried (the API refuses it too): say so.
      const tagList = (list: Array<{ value: string; path: PathSegment[] }>) => list.map((x) => {
        if (!NAME_RE.test(x.value)) c.warn('impossible-tag', x.path, `no workload can ever carry the tag '${x.value}' (tags are letters, digits, _ . : -), so it never matches`);
        return x.value;
      });
      const quick = quickNames(g.tags);
      if (quick !== null) group.tagsAnyOf = fitted(quick);
      else if (typeof g.tags === 'string' || Array.isArray(g.tags)) {
        group.tagsAnyOf = tagList(strList(c, g.tags, [...path, 'tags'], 'tags'));
      } else {
        const t = mapping(c, g.tags, [...path, 'tags'], ['anyOf', 'allOf'], 'a tag list, or { anyOf: [...] } or { allOf: [...] }');
        if (t) {
          group.tagsAnyOf = tagList(strList(c, t.anyOf, [...path, 'tags', 'anyOf'], 'tags'));
          group.tagsAllOf = tagList(strList(c, t.allOf, [...path, 'tags', 'allOf'], 'tags'));
        }
      }
    }
    // Most groups name only tags: the lists a group leaves out are not read at all (each made a path and a closure).
    if (g.workloads !== undefined) {
      for (const w of strList(c, g.workloads, [...path, 'workloads'], 'workload names')) {
        if (!workloads.has(w.value)) c.error('unknown-workload', w.path, `no workload named '${w.value}'${suggest(w.value, workloads.keys())}`);
        else group.workloads.push(w.value);
      }
    }
    if (g.cidrs !== undefined) {
      strEach(c, g.cidrs, [...path, 'cidrs'], 'CIDRs', (x) => {
        const p = prefixOf(c, x, true);
        if (p) group.cidrs.push(p);
      });
    }
    if (g.groups !== undefined) group.groups = strList(c, g.groups, [...path, 'groups'], 'group names').map((x) => x.value);
    if (group.tagsAnyOf.length + group.tagsAllOf.length + group.workloads.length + group.cidrs.length + group.groups.length === 0 && g.workloads === undefined && g.cidrs === undefined) {
      c.warn('empty-group', path, `group '${name}' names no tags, workloads, CIDRs or groups, so it never matches`);
    }
    out.set(name, group);
  }
  // Nested groups must exist, must not form a cycle, and nest at most MAX_GROUP_DEPTH deep.
  for (const g of out.values()) {
    g.groups.forEach((sub, i) => {
      if (!out.has(sub)) c.error('unknown-group', ['groups', g.name, 'groups', i], `no group named '${sub}'${suggest(sub, out.keys())}`);
    });
  }
  // Depth-first with an explicit stack (a 20,000-group chain must not overflow the call stack).
  const state = new Map<string, 'active' | 'done'>();
  const height = new Map<string, number>(); // levels of nesting below a group
  for (const root of out.keys()) {
    if (state.has(root)) continue;
    const stack: Array<{ name: string; next: number }> = [{ name: root, next: 0 }];
    state.set(root, 'active');
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const g = out.get(top.name)!;
      if (top.next < g.groups.length) {
        const i = top.next++;
        const sub = g.groups[i];
        if (!out.has(sub)) continue;
        if (state.get(sub) === 'active') {
          const names = stack.map((f) => f.name);
          const cycle = [...names.slice(names.indexOf(sub)), sub];
          const shown = cycle.length > 12 ? [...cycle.slice(0, 5), `... ${cycle.length - 10} more ...`, ...cycle.slice(-5)] : cycle;
          c.error('group-cycle', ['groups', top.name, 'groups', i], `groups form a cycle: ${shown.join(' -> ')}`);
        } else if (!state.has(sub)) {
          state.set(sub, 'active');
          stack.push({ name: sub, next: 0 });
        }
        continue;
      }
      let h = 0;
      for (const sub of g.groups) h = Math.max(h, (height.get(sub) ?? 0) + 1);
      height.set(top.name, h);
      // Reported once, where the nesting first goes past the limit (not again at every group above it).
      if (h === MAX_GROUP_DEPTH + 1) {
        c.error('group-depth', ['groups', top.name, 'groups'], `groups nest ${h} levels deep below '${top.name}'; at most ${MAX_GROUP_DEPTH} are allowed`);
      }
      state.set(top.name, 'done');
      stack.pop();
    }
  }
  return out;
}

/** Groups nest at most this deep (NSX allows 5; deeper is a generated policy gone wrong). */
export const MAX_GROUP_DEPTH = 32;

function suggest(name: string, known: Iterable<string>): string {
  const list = [...known];
  const close = list.filter((k) => k.toLowerCase() === name.toLowerCase() || editDistance(k, name) <= Math.max(1, Math.floor(name.length / 3)));
  return close.length > 0 ? ` (did you mean '${close[0]}'?)` : '';
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

function serviceEntry(c: Checker, v: Json, path: PathSegment[]): { atoms: ServiceAtom[]; text: string } | null {
  try {
    if (typeof v === 'string') return { atoms: parseServiceSpec(v), text: v };
    const o = mapping(c, v, path, ['proto', 'ports', 'sourcePorts'], 'a service: a string like tcp/443 or { proto, ports, sourcePorts }');
    if (!o) return null;
    const proto = str(c, o.proto, [...path, 'proto'], 'a protocol name (tcp, udp, sctp, icmp, icmpv6)');
    if (proto === null) return null;
    const portText = (x: Json | undefined, key: string): string | undefined => {
      if (x === undefined) return undefined;
      if (typeof x === 'number') return String(x);
      if (typeof x === 'string') return x;
      c.error('wrong-type', [...path, key], `expected ports like 443 or 1024-65535, found ${describe(x)}`);
      return undefined;
    };
    const text = `${proto}${o.ports !== undefined ? `/${o.ports}` : ''}${o.sourcePorts !== undefined ? ` from ${o.sourcePorts}` : ''}`;
    return { atoms: parseServiceObject(proto, portText(o.ports, 'ports'), portText(o.sourcePorts, 'sourcePorts')), text };
  } catch (e) {
    if (e instanceof ServiceSyntaxError) {
      c.error('bad-service', path, e.message);
      return null;
    }
    throw e;
  }
}

function readServices(c: Checker, raw: Json | undefined): Policy['services'] {
  const out: Policy['services'] = new Map();
  if (raw === undefined) return out;
  const m = mapping(c, raw, ['services'], null, 'services by name');
  if (!m) return out;
  for (const [name, body] of Object.entries(m)) {
    const path: PathSegment[] = ['services', name];
    if (!NAME_RE.test(name)) c.error('bad-name', path, `'${name}' is not a valid service name (letters, digits, _ . : -)`, true);
    if (RESERVED_SERVICE_NAMES.has(name.toLowerCase())) {
      c.error('reserved-name', path, `'${name}' is reserved: it reads as a service spec`, true);
    }
    const list = Array.isArray(body) ? body : [body];
    const atoms: ServiceAtom[] = [];
    const specs: string[] = [];
    list.forEach((entry, i) => {
      const p = Array.isArray(body) ? [...path, i] : path;
      const s = serviceEntry(c, entry, p);
      if (s) {
        atoms.push(...s.atoms);
        specs.push(s.text);
      }
    });
    if (Array.isArray(body) && body.length === 0) c.error('bad-service', path, `service '${name}' is an empty list`);
    out.set(name, { name, atoms, specs });
  }
  return out;
}

/**
 * A rule's list read once per way it is written in the document: a side,
 * services or appliedTo written as an earlier rule's was (the same JSON) is
 * that rule's list, the same array of the same references. Only a list read
 * without a problem is kept, so one that has any is read (and reported)
 * again where it appears. Nothing changes the model once it is made, and
 * a change to one rule's list must never reach another rule's: the Rule
 * type has them read-only (not frozen: the structured clone sends a frozen
 * array as a sparse one, and the forwarding thread's heap grew by 21 MB at
 * 100,000 rules with frozen lists). A data-center policy writes the
 * same few sides and services over and over: at 100,000 rules the
 * forwarding thread's heap held 28 MB less (176 -> 146-148 MB; it receives
 * rules a part at a time, and the structured clone keeps what one part
 * shares shared) and a full collection of it took 124 ms instead of
 * 144-146. A workload's tags stay a list of its own.
 */
function sameAsWritten<T>(c: Checker, read: Map<string, readonly T[]>, raw: Json | undefined, make: () => T[]): T[] {
  const key = raw === undefined ? '' : JSON.stringify(raw);
  const held = read.get(key);
  if (held !== undefined) return held as T[];
  const before = c.problems.length;
  const made = make();
  if (c.problems.length === before) read.set(key, made);
  return made;
}

function addressRefs(c: Checker, v: Json | undefined, path: PathSegment[], groups: Map<string, Group>): AddressRef[] {
  if (v === undefined) {
    c.error('missing-key', path.slice(0, -1), `rule has no '${String(path[path.length - 1])}' (use 'any' to match every address)`);
    return [];
  }
  const items = strList(c, v, path, 'group names, CIDRs or any');
  if (Array.isArray(v) && v.length === 0) c.error('bad-value', path, `an empty list matches nothing; use 'any' or name groups`);
  const out: AddressRef[] = [];
  for (const it of items) {
    if (it.value === 'any') out.push({ kind: 'any' });
    else if (groups.has(it.value)) out.push({ kind: 'group', name: it.value });
    else if (/^[0-9a-fA-F.:]+(\/\d+)?$/.test(it.value) && /[.:]/.test(it.value)) {
      const p = prefixOf(c, it, true);
      if (p) out.push({ kind: 'cidr', prefix: p });
    } else c.error('unknown-group', it.path, `no group named '${it.value}'${suggest(it.value, groups.keys())}`);
  }
  if (out.some((r) => r.kind === 'any') && out.length > 1) c.warn('redundant-any', path, `'any' already matches every address; the other entries add nothing`);
  return fitted(out);
}

function serviceRefs(c: Checker, v: Json | undefined, path: PathSegment[], services: Policy['services']): ServiceRef[] {
  if (v === undefined) return [{ kind: 'any' }];
  const list = Array.isArray(v) ? v : [v];
  if (Array.isArray(v) && v.length === 0) c.error('bad-value', path, `an empty list matches nothing; use 'any' or name services`);
  const out: ServiceRef[] = [];
  list.forEach((entry, i) => {
    const p = Array.isArray(v) ? [...path, i] : path;
    if (entry === 'any') out.push({ kind: 'any' });
    else if (typeof entry === 'string' && services.has(entry)) out.push({ kind: 'named', name: entry });
    else if (typeof entry === 'string' && !entry.includes('/') && !RESERVED_SERVICE_NAMES.has(entry.toLowerCase())) {
      c.error('unknown-service', p, `no service named '${entry}'${suggest(entry, services.keys())} (define it under services, or write a spec like tcp/443)`);
    } else {
      const s = serviceEntry(c, entry, p);
      if (s) out.push({ kind: 'inline', text: s.text, atoms: s.atoms });
    }
  });
  return fitted(out);
}


/** Families an address side can ever hold: a tag group may gain any workload at run time. */
/**
 * What lintRules asks of groups, computed once per group so that the whole
 * check stays linear in rules plus groups plus workloads (asking per rule
 * walked every workload for every rule: 18 s at 10,000 rules over 10,000
 * workloads).
 */
class GroupFacts {
  private readonly families = new Map<string, Set<number>>();
  private readonly members = new Map<string, number>();
  private anyWorkloadFamilies: Set<number> | null = null;
  private workloadIndex: WorkloadIndex | null = null;
  constructor(private readonly policy: Policy) {}

  private index(): WorkloadIndex {
    return (this.workloadIndex ??= new WorkloadIndex(this.policy.workloads));
  }

  /** Families of the addresses any workload can have (a tag group may hold any of them after a tag call). */
  private allFamilies(): Set<number> {
    if (!this.anyWorkloadFamilies) {
      const out = new Set<number>([6]); // link-local
      for (const w of this.policy.workloads.values()) for (const p of w.ips) out.add(p.family);
      this.anyWorkloadFamilies = out;
    }
    return this.anyWorkloadFamilies;
  }

  /** IP families a group's addresses can be of (nested groups included; a cycle adds nothing more). */
  groupFamilies(name: string, seen = new Set<string>()): Set<number> {
    const done = this.families.get(name);
    if (done) return done;
    const out = new Set<number>();
    const g = this.policy.groups.get(name);
    if (!g || seen.has(name)) return out;
    seen.add(name);
    for (const p of g.cidrs) out.add(p.family);
    for (const w of g.workloads) {
      const wl = this.policy.workloads.get(w);
      if (wl) { out.add(6); for (const p of wl.ips) out.add(p.family); }
    }
    if (g.tagsAnyOf.some((t) => NAME_RE.test(t)) || (g.tagsAllOf.length > 0 && g.tagsAllOf.every((t) => NAME_RE.test(t)))) {
      for (const f of this.allFamilies()) out.add(f);
    }
    for (const sub of g.groups) for (const f of this.groupFamilies(sub, seen)) out.add(f);
    this.families.set(name, out);
    return out;
  }

  sideFamilies(refs: Rule['from']): Set<number> {
    const out = new Set<number>();
    for (const r of refs) {
      if (r.kind === 'any') { out.add(4); out.add(6); } else if (r.kind === 'cidr') out.add(r.prefix.family);
      else for (const f of this.groupFamilies(r.name)) out.add(f);
    }
    return out;
  }

  /** Workloads a group holds by the document alone (named, static tags, nested groups). */
  staticMembers(name: string, seen = new Set<string>()): number {
    const done = this.members.get(name);
    if (done !== undefined) return done;
    const g = this.policy.groups.get(name);
    if (!g || seen.has(name)) return 0;
    seen.add(name);
    let n = 0;
    n += this.index().selected(g).length;
    for (const sub of g.groups) n += this.staticMembers(sub, seen);
    this.members.set(name, n);
    return n;
  }
}

/**
 * Rules that compile to nothing without a word otherwise: appliedTo groups
 * with no workloads, and rules whose sides and services share no IP family.
 */
function lintRules(c: Checker, policy: Policy): void {
  const facts = new GroupFacts(policy);
  // Rules share their lists where they are written alike (sameAsWritten): what a list allows is worked out once per list.
  const sideMemo = new Map<Rule['from'], Set<number>>(), serviceMemo = new Map<Rule['services'], ServiceFamilies>();
  // Runs only on a model without errors, so rule ri of section si stands at sections[si].rules[ri] in the document.
  policy.sections.forEach((section, si) => section.rules.forEach((rule, ri) => {
    if (rule.disabled) return;
    rule.appliedTo.forEach((g, i) => {
      if (policy.groups.has(g) && facts.staticMembers(g) === 0) {
        c.warn('applied-to-nobody', [...rulePath(si, ri), 'appliedTo', i], `appliedTo group '${g}' has no workloads now, so the rule applies nowhere until a tag set at run time gives it members`);
      }
    });
    let svc = serviceMemo.get(rule.services);
    if (svc === undefined) serviceMemo.set(rule.services, svc = serviceFamilies(policy, rule.services));
    if (svc.ether) return;
    let from = sideMemo.get(rule.from);
    if (from === undefined) sideMemo.set(rule.from, from = facts.sideFamilies(rule.from));
    let to = sideMemo.get(rule.to);
    if (to === undefined) sideMemo.set(rule.to, to = facts.sideFamilies(rule.to));
    if (from.size === 0 || to.size === 0 || svc.families.size === 0) return; // empty groups are reported on their own
    if (!((from.has(4) && to.has(4) && svc.families.has(4)) || (from.has(6) && to.has(6) && svc.families.has(6)))) {
      const fam = (s: Set<number>) => [...s].map((f) => `IPv${f}`).join(' and ');
      c.warn('families-never-meet', rulePath(si, ri), `rule '${rule.id}' can never match: from holds ${fam(from)} addresses, to holds ${fam(to)}, and the services are ${fam(svc.families)}`);
    }
  }));
}

interface ServiceFamilies {
  /** An EtherType among them: the rule matches frames that are not IP (checked on its own, at load). */
  ether: boolean;
  /** IP families the services can match. */
  families: Set<number>;
}

function serviceFamilies(policy: Policy, refs: Rule['services']): ServiceFamilies {
  const out: ServiceFamilies = { ether: false, families: new Set<number>() };
  for (const s of refs) {
    const atoms = s.kind === 'any' ? null : s.kind === 'inline' ? s.atoms : policy.services.get(s.name)?.atoms ?? [];
    if (atoms === null) { out.families.add(4); out.families.add(6); continue; }
    for (const a of atoms) {
      if (a.kind === 'ether') out.ether = true;
      else if (a.kind === 'ip' && a.family === 0) { out.families.add(4); out.families.add(6); } else out.families.add(a.family);
    }
  }
  return out;
}

/**
 * The sections and their rules. By rule order, `lines` and `columns` get
 * where each rule stands in the text (the RulePlaces).
 */
function readSections(c: Checker, raw: Json | undefined, groups: Map<string, Group>, workloads: Map<string, Workload>, services: Policy['services'], lines: number[], columns: number[]): Section[] {
  if (raw === undefined) {
    c.error('missing-key', [], `the policy has no 'sections' (use an empty list for none)`);
    return [];
  }
  if (!Array.isArray(raw)) {
    c.error('wrong-type', ['sections'], `expected a list of sections in precedence order, found ${describe(raw)}`);
    return [];
  }
  const sections: Section[] = [];
  const ids = new Map<string, PathSegment[]>(); // rule id -> where it was first used
  const sectionNames = new Set<string>();
  const sides = new Map<string, readonly AddressRef[]>(), serviceLists = new Map<string, readonly ServiceRef[]>(), scopes = new Map<string, readonly string[]>();
  raw.forEach((sRaw, si) => {
    const sPath: PathSegment[] = ['sections', si];
    const s = mapping(c, sRaw, sPath, SECTION_KEYS, 'a section { name, rules }');
    if (!s) return;
    const name = s.name === undefined ? (c.error('missing-key', sPath, 'section has no name'), `#${si}`) : str(c, s.name, [...sPath, 'name'], 'section name', NAME_RE) ?? `#${si}`;
    if (sectionNames.has(name)) c.error('duplicate-section', [...sPath, 'name'], `section '${name}' is defined twice`);
    sectionNames.add(name);
    const section: Section = { name, rules: [] };
    sections.push(section);
    if (s.rules === undefined) return;
    if (!Array.isArray(s.rules)) {
      c.error('wrong-type', [...sPath, 'rules'], `expected a list of rules, found ${describe(s.rules)}`);
      return;
    }
    s.rules.forEach((rRaw, ri) => {
      // Paths below a rule are made only for a message (most rules have none): they cost a tenth of a first load.
      const path = rulePath(si, ri);
      const r = mapping(c, rRaw, path, RULE_KEYS, 'a rule { id, from, to, services, action }');
      if (!r) return;
      let id = `${name}#${ri}`;
      if (r.id === undefined) c.error('missing-key', path, 'rule has no id');
      else {
        const v = typeof r.id === 'string' && NAME_RE.test(r.id) ? r.id : str(c, r.id, [...path, 'id'], 'rule id (letters, digits, _ . : -)', NAME_RE);
        if (v !== null) {
          const prev = ids.get(v);
          if (prev !== undefined) c.error('duplicate-id', [...path, 'id'], `rule id '${v}' is already used at ${formatPath(prev)}`);
          else ids.set(v, path);
          id = v;
        }
      }
      const from = sameAsWritten(c, sides, r.from, () => addressRefs(c, r.from, [...path, 'from'], groups));
      const to = sameAsWritten(c, sides, r.to, () => addressRefs(c, r.to, [...path, 'to'], groups));
      const svc = sameAsWritten(c, serviceLists, r.services, () => serviceRefs(c, r.services, [...path, 'services'], services));
      const act = r.action === undefined ? (c.error('missing-key', path, `rule has no action (allow, drop or reject)`), 'drop' as Action)
        : (ACTIONS as readonly Json[]).includes(r.action) ? r.action as Action : action(c, r.action, [...path, 'action']) ?? 'drop';
      const appliedTo = sameAsWritten(c, scopes, r.appliedTo, () => {
        const list: string[] = [];
        for (const a of strList(c, r.appliedTo, [...path, 'appliedTo'], 'group names')) {
          if (a.value === 'any') continue;
          if (groups.has(a.value)) list.push(a.value);
          else if (workloads.has(a.value)) c.error('unknown-group', a.path, `appliedTo names groups; '${a.value}' is a workload: put it in a group`);
          else c.error('unknown-group', a.path, `no group named '${a.value}'${suggest(a.value, groups.keys())}`);
        }
        if (Array.isArray(r.appliedTo) && r.appliedTo.length === 0) c.error('bad-value', [...path, 'appliedTo'], 'an empty appliedTo list applies the rule nowhere; leave appliedTo out to apply it everywhere');
        return list;
      });
      const rule: Rule = {
        id,
        section: name,
        from,
        to,
        services: svc,
        action: act,
        appliedTo,
        log: typeof r.log === 'boolean' ? r.log : bool(c, r.log, [...path, 'log'], false),
        stateless: typeof r.stateless === 'boolean' ? r.stateless : bool(c, r.stateless, [...path, 'stateless'], false),
        disabled: typeof r.disabled === 'boolean' ? r.disabled : bool(c, r.disabled, [...path, 'disabled'], false),
        comment: r.comment === undefined ? '' : typeof r.comment === 'string' ? r.comment : str(c, r.comment, [...path, 'comment'], 'a comment (text)') ?? '',
      };
      // Non-IP frames carry no IP address, so an EtherType can only be matched with any/any.
      const hasEther = svc.some((s) => (s.kind === 'inline' ? s.atoms : s.kind === 'named' ? services.get(s.name)?.atoms ?? [] : []).some((a) => a.kind === 'ether'));
      if (hasEther && (from.some((f) => f.kind !== 'any') || to.some((t) => t.kind !== 'any'))) {
        c.error('ether-needs-any', [...path, 'services'], `an EtherType service matches non-IP frames, which have no IP address: this rule needs from: any and to: any`);
      }
      const at = c.locate(path);
      lines.push(at.line);
      columns.push(at.column);
      section.rules.push(rule);
    });
  });
  return sections;
}

/** Validate parsed data (`source` names it in messages); returns the model and every problem. */
export interface ParseOptions {
  /**
   * Look for shadowed rules (warnings only). It compares rule pairs, so it
   * grows with the square of the policy: `tapwall check` does it; the daemon,
   * applying a change on the clock, does not.
   */
  shadows?: boolean;
  /** Always parse with locations (the answer the quick path must equal; tests compare the two). */
  located?: boolean;
}

export function policyFromData(data: Json, source: string, c: Checker = new Checker(source, null, null), opts: ParseOptions = {}): { policy: Policy | null; problems: PolicyProblem[] } {
  const top = mapping(c, data, [], TOP_KEYS, 'a policy document');
  if (!top) return { policy: null, problems: c.problems };
  if (top.version !== undefined && top.version !== 1) c.error('bad-value', ['version'], `expected version 1, found ${describe(top.version)}`);
  const def = top.default === undefined ? 'drop' : action(c, top.default, ['default']) ?? 'drop';
  const spoofguard = bool(c, top.spoofguard, ['spoofguard'], true);
  const workloads = readWorkloads(c, top.workloads);
  const groups = readGroups(c, top.groups, workloads);
  const services = readServices(c, top.services);
  const lines: number[] = [], columns: number[] = [];
  const sections = readSections(c, top.sections, groups, workloads, services, lines, columns);
  const places = { lines: Int32Array.from(lines), columns: Int32Array.from(columns) };
  const policy: Policy = { source, default: def, spoofguard, workloads, groups, services, sections, places };
  if (!c.failed) lintRules(c, policy);
  if (!c.failed && opts.shadows !== false) c.problems.push(...findShadowedRules(policy));
  return { policy: c.failed ? null : policy, problems: c.problems };
}

/**
 * The quick way through a document that turns out to be valid: JSON.parse for
 * JSON (after a linear check for repeated keys, which JSON.parse would let
 * the last one win); for YAML, libyaml turning it into JSON text in the
 * native addon (scalars typed as js-yaml's core schema types them) and
 * JSON.parse, 85-120 ms for 10,000 rules where js-yaml takes 230-470 ms, or
 * js-yaml with the core schema where the addon declines (it does for
 * repeated keys and numbers JSON writes otherwise, see yaml.c) or is not
 * built (js-yaml is itself five times faster than the located parse).
 * Any doubt goes the located way, whose answer is the one that counts: a
 * syntax error, a repeated key, any problem or warning (they need lines and
 * columns), and documents with anchors, aliases, tags or merge keys (where
 * YAML libraries differ). Rules read the quick way have no line and column:
 * those are read only to place a problem, and a problem sends the document
 * the located way.
 */
function policyParseFast(text: string, json: boolean, scanned: TextScan, file: string, opts: ParseOptions): { policy: Policy | null; problems: PolicyProblem[] } | null {
  let data: unknown;
  try {
    if (json) {
      if (scanned === TextScan.KeyDoubtful || (scanned !== TextScan.Clean && jsonRepeatsKey(text))) return null;
      data = JSON.parse(text);
    } else {
      if (/(^|[\s,[{:-])[&*!]|<</.test(text)) return null;
      const asJson = nativeIfBuilt()?.yamlToJson?.(text) ?? null;
      data = asJson !== null ? JSON.parse(asJson) : yamlLoad(text, { schema: CORE_SCHEMA });
    }
  } catch {
    return null;
  }
  const r = policyFromData(data as Json, file, new Checker(file, null, null), opts);
  return r.problems.length === 0 ? r : null;
}

/** What the addon's pass over a text found (native-bindings/src/text.c); Unscanned where it is not built. */
const enum TextScan { Clean = 0, TextDoubtful = 1, KeyDoubtful = 2, KeyEscaped = 3, Unscanned = -1 }

/**
 * Does a JSON text repeat a key in one object, or nest deeper than
 * MAX_NESTING (then the located way refuses it with its place)? Linear; keys
 * compared as JSON decodes them. Run when the addon's pass (policyParse) is
 * not built or met a key written with an escape; exported for the test
 * that compares the two.
 */
export function jsonRepeatsKey(text: string, maxNesting = MAX_NESTING): boolean {
  const stack: Array<Set<string> | null> = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34) { // a string
      let j = i + 1, escaped = false;
      while (j < text.length && text.charCodeAt(j) !== 34) { if (text.charCodeAt(j) === 92) { escaped = true; j++; } j++; }
      const top = stack.length > 0 ? stack[stack.length - 1] : null;
      if (expectKey && top) {
        const raw = text.slice(i, j + 1);
        let key: string;
        try { key = escaped ? (JSON.parse(raw) as string) : raw.slice(1, -1); } catch { return true; } // let the located parse say what is wrong
        if (top.has(key)) return true;
        top.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === 123) { if (stack.push(new Set()) > maxNesting) return true; expectKey = true; } // {
    else if (c === 91) { if (stack.push(null) > maxNesting) return true; expectKey = false; } // [
    else if (c === 125 || c === 93) { stack.pop(); expectKey = false; } // } ]
    else if (c === 44) expectKey = stack.length > 0 && stack[stack.length - 1] !== null; // ,
  }
  return false;
}

/** Parse YAML or JSON text and validate it. Never throws for bad input. */
export function policyParse(text: string, file: string, opts: ParseOptions = {}): { policy: Policy | null; problems: PolicyProblem[] } {
  const json = /^\s*\{/.test(text);
  // One pass of the addon's over the text where it is built (2 MB copied and scanned in 19 ms on a process's first
  // 10,000-rule document, 4.5 ms after, where this module's two scans took 47); this module's wherever it finds anything.
  const scanned: TextScan = text.length > MAX_POLICY_BYTES ? TextScan.Unscanned : nativeIfBuilt()?.policyTextScan?.(text, MAX_NESTING, json) ?? TextScan.Unscanned;
  const early = scanned === TextScan.TextDoubtful || scanned === TextScan.Unscanned ? textProblem(text, file) : null;
  if (early) return { policy: null, problems: [early] };
  const fast = opts.located ? null : policyParseFast(text, json, scanned, file, opts);
  if (fast) return fast;
  const lines = new LineCounter();
  // The parser's own duplicate-key check compares every pair of keys (seconds at 20,000 groups): ours is linear.
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: false });
  const c = new Checker(file, doc, lines);
  if (doc.errors.length === 0) duplicateKeys(doc, lines, file, c.problems);
  if (doc.errors.length > 0 || c.problems.length > 0) {
    for (const e of doc.errors) {
      const pos = lines.linePos(e.pos[0]);
      const msg = e.code === 'DUPLICATE_KEY' ? 'a key is repeated in the same mapping' : e.message.split('\n')[0];
      c.problems.push({ severity: 'error', code: e.code === 'DUPLICATE_KEY' ? 'duplicate-key' : 'syntax', file, line: pos.line, column: pos.col, path: '(document)', message: msg });
    }
    return { policy: null, problems: c.problems };
  }
  let data: Json;
  try {
    data = doc.toJS({ maxAliasCount: 100 }) as Json;
  } catch (e) {
    // Aliases: one whose anchor is missing, or more expansion than a policy needs (a "billion laughs").
    return { policy: null, problems: [aliasProblem(doc, lines, file, e as Error)] };
  }
  return policyFromData(data, file, c, opts);
}

/** Largest policy text accepted (a data center's policy is a few MiB). */
export const MAX_POLICY_BYTES = 64 * 1024 * 1024;
/** Deepest nesting of flow collections, and widest indentation, accepted (a policy needs 6 levels). */
export const MAX_NESTING = 64;

/**
 * Checks on the raw text before the YAML parser sees it: the size, and
 * how deep brackets nest or lines indent (the parser recurses, and very deep
 * nesting exhausts its stack or memory). One linear pass, run when the
 * addon's (policyParse) found something or is not built: this one says what
 * and where. Exported for the test that compares the two.
 */
export function textProblem(text: string, file: string, maxNesting = MAX_NESTING): PolicyProblem | null {
  const problem = (line: number, column: number, code: string, message: string): PolicyProblem =>
    ({ severity: 'error', code, file, line, column, path: '(document)', message });
  if (text.length > MAX_POLICY_BYTES) return problem(1, 1, 'too-large', `the document is ${text.length} characters; at most ${MAX_POLICY_BYTES} are accepted`);
  let depth = 0, line = 1, lineStart = 0, quote = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (ch === 10) {
      line++;
      lineStart = i + 1;
      let j = lineStart;
      while (j < text.length && (text.charCodeAt(j) === 32 || text.charCodeAt(j) === 45)) j++; // spaces and '- '
      if (j - lineStart > maxNesting * 4) return problem(line, j - lineStart + 1, 'too-deep', `indented ${j - lineStart} columns: nesting deeper than ${maxNesting} levels is refused`);
      continue;
    }
    if (quote !== '') {
      if ((ch === 34 && quote === '"' && text.charCodeAt(i - 1) !== 92) || (ch === 39 && quote === "'")) quote = '';
      continue;
    }
    if ((ch === 34 || ch === 39) && (i === 0 || opensQuote(text.charCodeAt(i - 1)))) quote = ch === 34 ? '"' : "'";
    else if (ch === 35 && (i === 0 || isSpace(text.charCodeAt(i - 1)))) { while (i + 1 < text.length && text.charCodeAt(i + 1) !== 10) i++; }
    else if (ch === 91 || ch === 123) {
      if (++depth > maxNesting) return problem(line, i - lineStart + 1, 'too-deep', `brackets nest deeper than ${maxNesting} levels`);
    } else if (ch === 93 || ch === 125) depth--;
  }
  return null;
}

/** What /\s/ matches, by character code. */
function isSpace(ch: number): boolean {
  if (ch === 32 || (ch >= 9 && ch <= 13)) return true;
  if (ch < 0xa0) return false;
  return ch === 0xa0 || ch === 0x1680 || (ch >= 0x2000 && ch <= 0x200a) || ch === 0x2028 || ch === 0x2029 || ch === 0x202f || ch === 0x205f || ch === 0x3000 || ch === 0xfeff;
}

/** May a quote start after this character (whitespace, [ { , :)? Character codes: a regex per quote cost 15 ms at 10,000 rules. */
function opensQuote(ch: number): boolean {
  return isSpace(ch) || ch === 91 || ch === 123 || ch === 44 || ch === 58;
}

/** Every key repeated in one mapping, and every key that is not a name, located; one pass with a set per mapping. */
function duplicateKeys(doc: Document, lines: LineCounter, file: string, out: PolicyProblem[]): void {
  visit(doc, {
    Map(_, map) {
      const seen = new Set<unknown>();
      for (const pair of map.items) {
        if (pair.key !== null && !isScalar(pair.key)) {
          // A list or mapping as a key: no policy key is one (and JavaScript objects cannot hold it).
          const pos = lines.linePos((pair.key as Node).range?.[0] ?? 0);
          out.push({ severity: 'error', code: 'bad-key', file, line: pos.line, column: pos.col, path: '(document)', message: 'a key must be a name, not a list or a mapping' });
          continue;
        }
        const key = isScalar(pair.key) ? pair.key.value : null;
        if (key === null) continue;
        if (seen.has(key)) {
          const pos = lines.linePos((pair.key as Node).range?.[0] ?? 0);
          out.push({ severity: 'error', code: 'duplicate-key', file, line: pos.line, column: pos.col, path: '(document)', message: `the key '${String(key)}' is repeated in the same mapping` });
        }
        seen.add(key);
      }
    },
  });
}

/** A located error for an alias that the YAML parser could not expand. */
function aliasProblem(doc: Document, lines: LineCounter, file: string, e: Error): PolicyProblem {
  let first: { alias: Alias; unresolved: boolean } | null = null;
  visit(doc, {
    Alias(_, node) {
      const unresolved = node.resolve(doc) === undefined;
      if (first === null || (unresolved && !first.unresolved)) first = { alias: node, unresolved };
      if (unresolved) return visit.BREAK;
      return undefined;
    },
  });
  const found = first as { alias: Alias; unresolved: boolean } | null;
  const pos = found?.alias.range ? lines.linePos(found.alias.range[0]) : { line: 1, col: 1 };
  const message = found?.unresolved
    ? `the alias *${found.alias.source} names no anchor set before it`
    : /alias count/i.test(e.message)
      ? 'aliases expand to too much: more than 100 alias expansions are refused (a policy does not need them)'
      : `an alias cannot be expanded: ${e.message.split('\n')[0]}`;
  return { severity: 'error', code: 'alias', file, line: pos.line, column: pos.col, path: '(document)', message };
}

/** Read and validate a policy file; throws PolicyError listing every problem. */
export function policyLoad(file: string, opts: ParseOptions = {}): { policy: Policy; warnings: PolicyProblem[] } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new PolicyError([{ severity: 'error', code: 'unreadable', file, line: 0, column: 0, path: '(document)', message: `cannot read the file: ${err.code ?? err.message}` }]);
  }
  const { policy, problems } = policyParse(text, file, opts);
  if (!policy) throw new PolicyError(problems);
  return { policy, warnings: problems };
}

