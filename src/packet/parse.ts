/**
 * Frame parsing: an Ethernet frame in a byte buffer -> a fixed record of
 * header fields in a scratch Int32Array (`pkt`, laid out by PKT below).
 *
 * Hot path: called once per frame; allocates nothing, never throws. A frame
 * that cannot be read returns PARSE.malformed, and the caller counts it.
 *
 * What it reads: up to two VLAN tags (802.1Q, 802.1ad); IPv4 (options, IHL and
 * total-length checks, fragments); IPv6 (extension headers: hop-by-hop,
 * routing, destination options, fragment, authentication; at most
 * MAX_EXT_HEADERS of them); TCP ports and flags, UDP and SCTP ports, ICMP
 * and ICMPv6 type, code and echo identifier; for ICMP and ICMPv6 errors, the
 * quoted inner header's addresses and ports.
 *
 * Fail closed: a frame it cannot read to the end is malformed, never
 * classified on a guess. That covers truncated headers of every kind, a TCP
 * data offset below 5, more than MAX_EXT_HEADERS extension headers, an
 * extension header it does not know (mobility, HIP, shim6, experimental), a
 * type-0 routing header (RFC 5095), a third VLAN tag, and a later fragment
 * that would overlap the first fragment's TCP header (RFC 1858).
 *
 * Addresses are stored as raw 32-bit words (`| 0`), IPv4 in the first word
 * with the other three 0. Ports: for ICMP echo both hold the identifier (so
 * a request and its reply are one flow in either direction); for protocols
 * without ports both are 0.
 */

export const enum PKT {
  family = 0, // 4 or 6
  proto = 1,
  src = 2, // 4 words
  dst = 6, // 4 words
  sport = 10,
  dport = 11,
  tcpFlags = 12,
  l3Offset = 13,
  l4Offset = 14,
  /** Frame length in bytes, as received. */
  length = 15,
  ethertype = 16,
  /** Outer VLAN id, or -1 when untagged. */
  vlan = 17,
  icmpType = 18,
  icmpCode = 19,
  /** FRAG below. */
  fragment = 20,
  /** IPv4 identification or IPv6 fragment identification, for fragment tracking. */
  fragmentId = 21,
  /** For ICMP errors: the quoted packet's protocol, addresses and ports (proto -1 when none). */
  innerProto = 22,
  innerSrc = 23, // 4 words
  innerDst = 27, // 4 words
  innerSport = 31,
  innerDport = 32,
  /** ICMP class, ICMP below. */
  icmpClass = 33,
  /** How many VLAN tags the frame carries (0, 1 or 2). */
  vlanCount = 34,
  /** Offset just past the IP packet (its total or payload length; padding after it is not part of it). */
  ipEnd = 35,
}
export const PKT_WORDS = 36;

/** parseFrame results. */
export const enum PARSE { ip = 0, arp = 1, otherEther = 2, malformed = -1 }

export const enum FRAG { none = 0, first = 1, later = 2 }
export const enum ICMP { notIcmp = 0, echoRequest = 1, echoReply = 2, error = 3, other = 4 }

export const TCP_FIN = 0x01, TCP_SYN = 0x02, TCP_RST = 0x04, TCP_PSH = 0x08, TCP_ACK = 0x10;

/** More extension headers than this in one IPv6 packet: malformed (real stacks send two or three). */
export const MAX_EXT_HEADERS = 8;

const ETH_IPV4 = 0x0800, ETH_IPV6 = 0x86dd, ETH_ARP = 0x0806, ETH_VLAN = 0x8100, ETH_QINQ = 0x88a8;

function word(b: Uint8Array, o: number): number {
  return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3];
}

/** Ports, flags and ICMP fields of the L4 header at `l4` (length `avail`); false if truncated. */
function parseL4(b: Uint8Array, l4: number, avail: number, proto: number, pkt: Int32Array, v6: boolean): boolean {
  if (proto === 6) {
    if (avail < 20) return false;
    const doff = (b[l4 + 12] >> 4) << 2;
    if (doff < 20 || doff > avail) return false;
    pkt[PKT.sport] = (b[l4] << 8) | b[l4 + 1];
    pkt[PKT.dport] = (b[l4 + 2] << 8) | b[l4 + 3];
    pkt[PKT.tcpFlags] = b[l4 + 13];
    return true;
  }
  if (proto === 17 || proto === 132) {
    if (avail < 8) return false;
    pkt[PKT.sport] = (b[l4] << 8) | b[l4 + 1];
    pkt[PKT.dport] = (b[l4 + 2] << 8) | b[l4 + 3];
    return true;
  }
  if ((proto === 1 && !v6) || (proto === 58 && v6)) {
    if (avail < 8) return false;
    const type = b[l4];
    pkt[PKT.icmpType] = type;
    pkt[PKT.icmpCode] = b[l4 + 1];
    const echoReq = v6 ? 128 : 8, echoRep = v6 ? 129 : 0;
    if (type === echoReq || type === echoRep) {
      const id = (b[l4 + 4] << 8) | b[l4 + 5];
      pkt[PKT.sport] = id;
      pkt[PKT.dport] = id;
      pkt[PKT.icmpClass] = type === echoReq ? ICMP.echoRequest : ICMP.echoReply;
    } else if (v6 ? type >= 1 && type <= 4 : type === 3 || type === 4 || type === 5 || type === 11 || type === 12) {
      pkt[PKT.icmpClass] = ICMP.error;
      parseInner(b, l4 + 8, avail - 8, pkt, v6);
    } else pkt[PKT.icmpClass] = ICMP.other;
    return true;
  }
  return true; // other protocols: no ports
}

/** The packet quoted in an ICMP error: addresses, protocol and the first 4 bytes of its L4 header. */
function parseInner(b: Uint8Array, o: number, avail: number, pkt: Int32Array, v6: boolean): void {
  if (!v6) {
    if (avail < 20 || b[o] >> 4 !== 4) return;
    const ihl = (b[o] & 15) * 4;
    if (ihl < 20 || avail < ihl + 4) return;
    pkt[PKT.innerProto] = b[o + 9];
    pkt[PKT.innerSrc] = word(b, o + 12);
    pkt[PKT.innerDst] = word(b, o + 16);
    const l4 = o + ihl;
    const p = b[o + 9];
    if (p === 6 || p === 17 || p === 132) {
      pkt[PKT.innerSport] = (b[l4] << 8) | b[l4 + 1];
      pkt[PKT.innerDport] = (b[l4 + 2] << 8) | b[l4 + 3];
    } else if (p === 1 && avail >= ihl + 8) {
      const id = (b[l4 + 4] << 8) | b[l4 + 5];
      pkt[PKT.innerSport] = id;
      pkt[PKT.innerDport] = id;
    }
    return;
  }
  if (avail < 44 || b[o] >> 4 !== 6) return;
  const p = b[o + 6];
  pkt[PKT.innerProto] = p;
  for (let i = 0; i < 4; i++) {
    pkt[PKT.innerSrc + i] = word(b, o + 8 + 4 * i);
    pkt[PKT.innerDst + i] = word(b, o + 24 + 4 * i);
  }
  const l4 = o + 40;
  if (p === 6 || p === 17 || p === 132) {
    pkt[PKT.innerSport] = (b[l4] << 8) | b[l4 + 1];
    pkt[PKT.innerDport] = (b[l4 + 2] << 8) | b[l4 + 3];
  } else if (p === 58 && avail >= 48) {
    const id = (b[l4 + 4] << 8) | b[l4 + 5];
    pkt[PKT.innerSport] = id;
    pkt[PKT.innerDport] = id;
  }
}

/**
 * Parse the frame at b[off .. off+len). Fills `pkt`; returns a PARSE value.
 * For PARSE.ip every field is set (unused ones 0, innerProto -1).
 */
export function parseFrame(b: Uint8Array, off: number, len: number, pkt: Int32Array): number {
  pkt[PKT.length] = len;
  if (len < 14 || off + len > b.length) return PARSE.malformed;
  const end = off + len;
  let o = off + 12;
  let ethertype = (b[o] << 8) | b[o + 1];
  let vlan = -1;
  let tags = 0;
  for (; ethertype === ETH_VLAN || ethertype === ETH_QINQ; tags++) {
    if (tags === 2 || o + 6 > end) return PARSE.malformed;
    if (vlan < 0) vlan = ((b[o + 2] << 8) | b[o + 3]) & 0xfff;
    o += 4;
    ethertype = (b[o] << 8) | b[o + 1];
  }
  o += 2;
  pkt[PKT.vlanCount] = tags;
  pkt[PKT.ipEnd] = end;
  pkt[PKT.ethertype] = ethertype;
  pkt[PKT.vlan] = vlan;
  pkt[PKT.l3Offset] = o;
  pkt[PKT.sport] = 0;
  pkt[PKT.dport] = 0;
  pkt[PKT.tcpFlags] = 0;
  pkt[PKT.icmpType] = 0;
  pkt[PKT.icmpCode] = 0;
  pkt[PKT.icmpClass] = ICMP.notIcmp;
  pkt[PKT.innerProto] = -1;
  pkt[PKT.fragment] = FRAG.none;
  pkt[PKT.fragmentId] = 0;
  pkt[PKT.family] = 0; // not IP until the IP header says so (a non-IP frame is logged and traced by its EtherType)
  pkt[PKT.proto] = 0;

  if (ethertype === ETH_IPV4) {
    if (o + 20 > end) return PARSE.malformed;
    const vihl = b[o];
    const ihl = (vihl & 15) << 2;
    const total = (b[o + 2] << 8) | b[o + 3];
    if (vihl >> 4 !== 4 || ihl < 20 || total < ihl || o + total > end) return PARSE.malformed;
    const proto = b[o + 9];
    pkt[PKT.family] = 4;
    pkt[PKT.proto] = proto;
    pkt[PKT.src] = word(b, o + 12);
    pkt[PKT.src + 1] = 0; pkt[PKT.src + 2] = 0; pkt[PKT.src + 3] = 0;
    pkt[PKT.dst] = word(b, o + 16);
    pkt[PKT.dst + 1] = 0; pkt[PKT.dst + 2] = 0; pkt[PKT.dst + 3] = 0;
    const fragField = (b[o + 6] << 8) | b[o + 7];
    const l4 = o + ihl;
    pkt[PKT.l4Offset] = l4;
    pkt[PKT.ipEnd] = o + total;
    if ((fragField & 0x1fff) !== 0) {
      if (proto === 6 && (fragField & 0x1fff) < 3) return PARSE.malformed; // would rewrite the TCP header
      pkt[PKT.fragment] = FRAG.later;
      pkt[PKT.fragmentId] = (b[o + 4] << 8) | b[o + 5];
      return PARSE.ip; // no L4 header in a later fragment
    }
    if ((fragField & 0x2000) !== 0) {
      pkt[PKT.fragment] = FRAG.first;
      pkt[PKT.fragmentId] = (b[o + 4] << 8) | b[o + 5];
    }
    return parseL4(b, l4, o + total - l4, proto, pkt, false) ? PARSE.ip : PARSE.malformed;
  }

  if (ethertype === ETH_IPV6) {
    if (o + 40 > end || b[o] >> 4 !== 6) return PARSE.malformed;
    const payload = (b[o + 4] << 8) | b[o + 5];
    const ipEnd = o + 40 + payload;
    if (ipEnd > end) return PARSE.malformed;
    pkt[PKT.family] = 6;
    for (let i = 0; i < 4; i++) {
      pkt[PKT.src + i] = word(b, o + 8 + 4 * i);
      pkt[PKT.dst + i] = word(b, o + 24 + 4 * i);
    }
    pkt[PKT.ipEnd] = ipEnd;
    let next = b[o + 6];
    let p = o + 40;
    for (let ext = 0; ; ext++) {
      if (next === 0 || next === 43 || next === 60 || next === 51 || next === 44) {
        if (ext === MAX_EXT_HEADERS || p + 8 > ipEnd) return PARSE.malformed;
      }
      if (next === 0 || next === 43 || next === 60) {
        if (next === 43 && b[p + 2] === 0) return PARSE.malformed; // type-0 routing header
        next = b[p];
        p += (b[p + 1] + 1) << 3;
      } else if (next === 51) {
        next = b[p];
        p += (b[p + 1] + 2) << 2;
      } else if (next === 44) {
        const fragField = (b[p + 2] << 8) | b[p + 3];
        pkt[PKT.fragmentId] = word(b, p + 4);
        next = b[p];
        p += 8;
        if ((fragField & 0xfff8) !== 0) {
          if (next === 6 && (fragField >> 3) < 3) return PARSE.malformed; // would rewrite the TCP header
          pkt[PKT.fragment] = FRAG.later;
          pkt[PKT.proto] = next;
          pkt[PKT.l4Offset] = p;
          return PARSE.ip;
        }
        if ((fragField & 1) !== 0) pkt[PKT.fragment] = FRAG.first;
      } else if (next === 135 || next === 139 || next === 140 || next === 253 || next === 254) {
        return PARSE.malformed; // extension headers we cannot read past: never guess what follows
      } else break;
      if (p > ipEnd) return PARSE.malformed;
    }
    pkt[PKT.proto] = next;
    pkt[PKT.l4Offset] = p;
    return parseL4(b, p, ipEnd - p, next, pkt, true) ? PARSE.ip : PARSE.malformed;
  }

  if (ethertype === ETH_ARP) return o + 28 <= end ? PARSE.arp : PARSE.malformed;
  return PARSE.otherEther;
}
