/**
 * Service specifications: what traffic a rule's `services` names.
 *
 *   tcp/443  udp/53  tcp/80,443  tcp/32768-60999  tcp (any port)  sctp/...
 *   icmp  icmp/echo-request  icmp/8  icmp/3/4 (type/code)  icmpv6/...
 *   ip/47  ip/gre            an IP protocol number, any ports
 *   ether/0x88cc  ether/lldp a non-IP EtherType
 *   arp  nd                  address resolution (ARP; IPv6 neighbour solicitation
 *                            and advertisement) between the rule's addresses
 *   { proto: tcp, ports: "443", sourcePorts: "1024-65535" }  (object form)
 *
 * Each spec expands to atoms that the compiler puts in the rule trie: ports
 * (or, for ICMP, type and code) become the sport and dport dimensions.
 */

export interface IpServiceAtom {
  kind: 'ip';
  /** 4 or 6 when the protocol is family-bound (ICMP, ICMPv6); 0 for both. */
  family: 0 | 4 | 6;
  /** IP protocol number, or -1 for any. */
  proto: number;
  /** Source port range, or ICMP type range. */
  sport: [number, number];
  /** Destination port range, or ICMP code range. */
  dport: [number, number];
}

export interface EtherServiceAtom {
  kind: 'ether';
  ethertype: number;
}

/** Address resolution: ARP (family 4) or neighbour solicitation and advertisement (family 6). */
export interface ResolveServiceAtom {
  kind: 'resolve';
  family: 4 | 6;
}

export type ServiceAtom = IpServiceAtom | EtherServiceAtom | ResolveServiceAtom;

export const ANY_SERVICE: IpServiceAtom = { kind: 'ip', family: 0, proto: -1, sport: [0, 65535], dport: [0, 65535] };

export const PROTO = { icmp: 1, tcp: 6, udp: 17, gre: 47, esp: 50, ah: 51, icmpv6: 58, ospf: 89, vrrp: 112, sctp: 132 } as const;
const PORTED = new Set<number>([PROTO.tcp, PROTO.udp, PROTO.sctp]);
const PROTO_NAMES: Record<string, number> = { ...PROTO };

export const ICMP_TYPES: Record<string, number> = {
  'echo-reply': 0,
  'destination-unreachable': 3,
  'source-quench': 4,
  redirect: 5,
  'echo-request': 8,
  'router-advertisement': 9,
  'router-solicitation': 10,
  'time-exceeded': 11,
  'parameter-problem': 12,
  'timestamp-request': 13,
  'timestamp-reply': 14,
};

export const ICMPV6_TYPES: Record<string, number> = {
  'destination-unreachable': 1,
  'packet-too-big': 2,
  'time-exceeded': 3,
  'parameter-problem': 4,
  'echo-request': 128,
  'echo-reply': 129,
  'router-solicitation': 133,
  'router-advertisement': 134,
  'neighbor-solicitation': 135,
  'neighbor-advertisement': 136,
  redirect: 137,
};

export const ETHERTYPES: Record<string, number> = {
  ipv4: 0x0800,
  arp: 0x0806,
  ipv6: 0x86dd,
  lldp: 0x88cc,
  'eapol': 0x888e,
  ptp: 0x88f7,
  mpls: 0x8847,
};

/** Words a service must not be named with, since they read as specs. */
export const RESERVED_SERVICE_NAMES = new Set(['any', ...Object.keys(PROTO_NAMES), 'ip', 'ether', 'arp', 'nd']);

export class ServiceSyntaxError extends Error {
  constructor(message: string) {
    super(message);
  }
}

function parsePortList(text: string, what: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const part of text.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new ServiceSyntaxError(`expected a ${what} like 443, 80,443 or 1024-65535, found '${part}'`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (lo > 65535 || hi > 65535) throw new ServiceSyntaxError(`${what} ${lo > 65535 ? lo : hi} is out of range 0-65535`);
    if (lo > hi) throw new ServiceSyntaxError(`${what} range ${lo}-${hi} runs backwards`);
    out.push([lo, hi]);
  }
  return out;
}

function parseNumberOrName(text: string, names: Record<string, number>, max: number, what: string): number {
  const lower = text.toLowerCase();
  if (lower in names) return names[lower];
  if (/^\d+$/.test(text) || /^0x[0-9a-f]+$/i.test(text)) {
    const n = Number(text);
    if (n > max) throw new ServiceSyntaxError(`${what} ${text} is out of range 0-${max}`);
    return n;
  }
  const known = Object.keys(names).join(', ');
  throw new ServiceSyntaxError(`unknown ${what} '${text}' (a number 0-${max}${known ? ` or one of ${known}` : ''})`);
}

/** Parse one string spec into atoms; throws ServiceSyntaxError with a precise message. */
export function parseServiceSpec(spec: string): ServiceAtom[] {
  if (spec === 'any') return [ANY_SERVICE];
  if (spec === 'arp') return [{ kind: 'resolve', family: 4 }];
  if (spec === 'nd') return [{ kind: 'resolve', family: 6 }];
  const slash = spec.indexOf('/');
  const head = (slash < 0 ? spec : spec.slice(0, slash)).toLowerCase();
  const rest = slash < 0 ? '' : spec.slice(slash + 1);
  if (slash >= 0 && rest === '') throw new ServiceSyntaxError(`nothing after '/' in '${spec}'`);

  if (head === 'tcp' || head === 'udp' || head === 'sctp') {
    const proto = PROTO_NAMES[head];
    const ports = rest === '' ? [[0, 65535] as [number, number]] : parsePortList(rest, 'port');
    return ports.map((dport) => ({ kind: 'ip', family: 0, proto, sport: [0, 65535], dport }));
  }
  if (head === 'icmp' || head === 'icmpv6') {
    const v6 = head === 'icmpv6';
    const base = { kind: 'ip' as const, family: (v6 ? 6 : 4) as 4 | 6, proto: v6 ? PROTO.icmpv6 : PROTO.icmp };
    if (rest === '') return [{ ...base, sport: [0, 255], dport: [0, 255] }];
    const parts = rest.split('/');
    if (parts.length > 2) throw new ServiceSyntaxError(`expected ${head}/TYPE or ${head}/TYPE/CODE, found '${spec}'`);
    const type = parseNumberOrName(parts[0], v6 ? ICMPV6_TYPES : ICMP_TYPES, 255, `${head} type`);
    const code = parts.length === 2 ? parseNumberOrName(parts[1], {}, 255, `${head} code`) : -1;
    return [{ ...base, sport: [type, type], dport: code < 0 ? [0, 255] : [code, code] }];
  }
  if (head === 'ip' || head === 'proto') {
    if (rest === '') throw new ServiceSyntaxError(`expected ip/PROTOCOL (a number 0-255 or a name), found '${spec}'`);
    const proto = parseNumberOrName(rest, PROTO_NAMES, 255, 'IP protocol');
    const family = proto === PROTO.icmp ? 4 : proto === PROTO.icmpv6 ? 6 : 0;
    const range: [number, number] = PORTED.has(proto) ? [0, 65535] : proto === 1 || proto === 58 ? [0, 255] : [0, 0];
    return [{ kind: 'ip', family, proto, sport: range, dport: range }];
  }
  if (head === 'ether' || head === 'ethertype') {
    if (rest === '') throw new ServiceSyntaxError(`expected ether/ETHERTYPE (like 0x88cc or lldp), found '${spec}'`);
    const ethertype = parseNumberOrName(rest, ETHERTYPES, 0xffff, 'EtherType');
    if (ethertype < 0x0600) throw new ServiceSyntaxError(`EtherType ${rest} is below 0x0600 (that is a frame length, not a type)`);
    if (ethertype === 0x0800 || ethertype === 0x86dd) {
      throw new ServiceSyntaxError(`EtherType ${rest} is IP: name IP traffic with tcp/..., udp/..., icmp, ip/N or any`);
    }
    if (ethertype === 0x0806) {
      throw new ServiceSyntaxError("ARP is address resolution: name it with the service 'arp' (and IPv6 neighbour discovery with 'nd')");
    }
    return [{ kind: 'ether', ethertype }];
  }
  throw new ServiceSyntaxError(
    `expected a service like tcp/443, udp/53, tcp/1024-65535, icmp/echo-request, icmpv6/128, ip/47 or ether/0x88cc, found '${spec}'`,
  );
}

/** The object form: { proto, ports?, sourcePorts? }. */
export function parseServiceObject(proto: string, ports?: string, sourcePorts?: string): ServiceAtom[] {
  const p = proto.toLowerCase();
  if (p !== 'tcp' && p !== 'udp' && p !== 'sctp') {
    if (sourcePorts !== undefined || ports !== undefined) {
      throw new ServiceSyntaxError(`ports apply to tcp, udp and sctp only, not '${proto}'`);
    }
    return parseServiceSpec(p);
  }
  const dports = ports === undefined ? [[0, 65535] as [number, number]] : parsePortList(ports, 'port');
  const sports = sourcePorts === undefined ? [[0, 65535] as [number, number]] : parsePortList(sourcePorts, 'source port');
  const out: ServiceAtom[] = [];
  for (const s of sports) for (const d of dports) out.push({ kind: 'ip', family: 0, proto: PROTO_NAMES[p], sport: s, dport: d });
  return out;
}

export function serviceAtomText(a: ServiceAtom): string {
  if (a.kind === 'ether') return `ether/0x${a.ethertype.toString(16).padStart(4, '0')}`;
  if (a.kind === 'resolve') return a.family === 4 ? 'arp' : 'nd';
  if (a.proto < 0) return 'any';
  const name = Object.keys(PROTO_NAMES).find((k) => PROTO_NAMES[k] === a.proto) ?? String(a.proto);
  const range = (r: [number, number], full: number) => (r[0] === 0 && r[1] === full ? '' : r[0] === r[1] ? `${r[0]}` : `${r[0]}-${r[1]}`);
  if (a.proto === PROTO.icmp || a.proto === PROTO.icmpv6) {
    const t = range(a.sport, 255), c = range(a.dport, 255);
    return t === '' ? name : c === '' ? `${name}/${t}` : `${name}/${t}/${c}`;
  }
  if (PORTED.has(a.proto)) {
    const d = range(a.dport, 65535), s = range(a.sport, 65535);
    return `${name}${d ? `/${d}` : ''}${s ? ` from port ${s}` : ''}`;
  }
  return `ip/${a.proto}`;
}

export function isPorted(proto: number): boolean {
  return PORTED.has(proto);
}
