/**
 * The reply stage: answers for `reject` (and for connections a new policy
 * cuts), as Linux's REJECT gives them: a TCP reset, or an ICMP / ICMPv6
 * "administratively prohibited" error quoting the packet, sent back out of
 * the port it came from as if from its destination.
 *
 * Design
 *   The reply is written bytes to bytes into the rejected frame's own receive
 *   slot (rejectWrite): the frame is not forwarded anywhere, so its slot is a
 *   preallocated transmit slot that nothing else reads, and the reply then
 *   leaves through the port's normal transmit queue with the batch. Nothing
 *   is allocated, no address is turned into text. The Ethernet header stays
 *   where it is with its MACs swapped, so VLAN tags go back as they came.
 *   What the reply needs of the old bytes (sequence numbers, the quoted
 *   header) is read or moved before it is overwritten.
 *
 * Never answered: a TCP reset, an ICMP error, a packet to or from a group
 * or unspecified address (RFC 1122 3.2.2, RFC 4443 2.4). Rate-limited per
 * port (ReplyLimiter), so a flood of denied packets is not a flood of
 * replies.
 *
 * Who may call what: rejectWrite runs on the packet path (allocation-free,
 * never throws).
 */
import { PKT, TCP_ACK, TCP_RST, TCP_SYN, TCP_FIN } from '../packet/parse.js';

export class ReplyLimiter {
  /**
   * [tokens, last]: in a typed array, since a fractional count kept in an
   * object field is boxed, a new heap number at every refusal answered.
   */
  private readonly state = new Float64Array(2);
  constructor(private readonly perSecond = 100, private readonly burst = 100) {
    this.state[0] = burst;
  }
  take(nowMs: number): boolean {
    const s = this.state;
    const tokens = Math.min(this.burst, s[0] + ((nowMs - s[1]) * this.perSecond) / 1000);
    s[1] = nowMs;
    if (tokens < 1) { s[0] = tokens; return false; }
    s[0] = tokens - 1;
    return true;
  }
}

/** The largest reply: Ethernet with two tags, IPv6, ICMPv6, 1232 quoted bytes (a minimum MTU in all). */
export const REPLY_MAX = 22 + 40 + 8 + 1232;

function sum16(b: Uint8Array, start: number, end: number, acc: number): number {
  let i = start;
  for (; i + 1 < end; i += 2) acc += (b[i] << 8) | b[i + 1];
  if (i < end) acc += b[i] << 8;
  return acc;
}

function fold(acc: number): number {
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  return ~acc & 0xffff;
}

function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 255;
  b[o + 1] = v & 255;
}

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24; b[o + 1] = (v >>> 16) & 255; b[o + 2] = (v >>> 8) & 255; b[o + 3] = v & 255;
}

function isGroupOrZero(pkt: Int32Array, at: number, family: number): boolean {
  if (family === 4) {
    const a = pkt[at];
    return a === 0 || a === -1 || (a >>> 28) === 0xe;
  }
  return (pkt[at] >>> 24) === 0xff || (pkt[at] | pkt[at + 1] | pkt[at + 2] | pkt[at + 3]) === 0;
}

/** The IP header of the reply at b[l3]: from the packet's destination to its source. Returns its length. */
function ipHeaderWrite(b: Uint8Array, l3: number, pkt: Int32Array, family: number, proto: number, l4len: number): number {
  if (family === 4) {
    b[l3] = 0x45; b[l3 + 1] = 0; put16(b, l3 + 2, 20 + l4len);
    put16(b, l3 + 4, 0); put16(b, l3 + 6, 0x4000); // DF, as Linux sends them
    b[l3 + 8] = 64; b[l3 + 9] = proto; put16(b, l3 + 10, 0);
    put32(b, l3 + 12, pkt[PKT.dst]);
    put32(b, l3 + 16, pkt[PKT.src]);
    put16(b, l3 + 10, fold(sum16(b, l3, l3 + 20, 0)));
    return 20;
  }
  put32(b, l3, 0x60000000); put16(b, l3 + 4, l4len); b[l3 + 6] = proto; b[l3 + 7] = 64;
  for (let k = 0; k < 4; k++) { put32(b, l3 + 8 + 4 * k, pkt[PKT.dst + k]); put32(b, l3 + 24 + 4 * k, pkt[PKT.src + k]); }
  return 40;
}

/** The L4 checksum over the pseudo-header (IPv4 ICMP sums only itself). */
function l4Checksum(b: Uint8Array, l3: number, l4: number, end: number, family: number, proto: number): number {
  let acc = 0;
  if (family === 4) {
    if (proto !== 1) acc = sum16(b, l3 + 12, l3 + 20, proto + (end - l4));
  } else acc = sum16(b, l3 + 8, l3 + 40, proto + (end - l4));
  return fold(sum16(b, l4, end, acc));
}

/**
 * Write the reply to the rejected frame at b[off .. off+len) (parsed into
 * `pkt`) over that same frame. Returns the reply's length from `off`, or 0
 * when none is due (the frame is then unchanged). Hot path.
 */
export function rejectWrite(b: Uint8Array, off: number, len: number, pkt: Int32Array): number {
  const family = pkt[PKT.family];
  if (family !== 4 && family !== 6) return 0;
  if (isGroupOrZero(pkt, PKT.src, family) || isGroupOrZero(pkt, PKT.dst, family) || (b[off + 6] & 1) !== 0) return 0;
  const proto = pkt[PKT.proto];
  const l3 = pkt[PKT.l3Offset], l4 = pkt[PKT.l4Offset];
  if (proto === 6) {
    const flags = pkt[PKT.tcpFlags];
    if ((flags & TCP_RST) !== 0) return 0; // never answer a reset
    const seq = ((b[l4 + 4] << 24) | (b[l4 + 5] << 16) | (b[l4 + 6] << 8) | b[l4 + 7]) >>> 0;
    const ack = ((b[l4 + 8] << 24) | (b[l4 + 9] << 16) | (b[l4 + 10] << 8) | b[l4 + 11]) >>> 0;
    const dataOff = (b[l4 + 12] >> 4) * 4;
    const segLen = Math.max(0, pkt[PKT.ipEnd] - l4 - dataOff) + ((flags & TCP_SYN) !== 0 ? 1 : 0) + ((flags & TCP_FIN) !== 0 ? 1 : 0);
    const hasAck = (flags & TCP_ACK) !== 0;
    macsSwap(b, off);
    const h = ipHeaderWrite(b, l3, pkt, family, 6, 20);
    const t = l3 + h;
    put16(b, t, pkt[PKT.dport]); put16(b, t + 2, pkt[PKT.sport]);
    put32(b, t + 4, hasAck ? ack : 0);
    put32(b, t + 8, hasAck ? 0 : (seq + segLen) >>> 0);
    b[t + 12] = 0x50; b[t + 13] = hasAck ? TCP_RST : TCP_RST | TCP_ACK;
    put16(b, t + 14, 0); put16(b, t + 16, 0); put16(b, t + 18, 0);
    put16(b, t + 16, l4Checksum(b, l3, t, t + 20, family, 6));
    return t + 20 - off;
  }
  if ((family === 4 && proto === 1) || (family === 6 && proto === 58)) {
    const type = pkt[PKT.icmpType];
    // Never answer an ICMP error with another.
    if (family === 4 ? type === 3 || type === 4 || type === 5 || type === 11 || type === 12 : type < 128) return 0;
  }
  // Quote the IP header and the first 8 bytes after it (IPv4), or as much as fits a minimum MTU (IPv6).
  const quoteLen = family === 4 ? Math.min(len - (l3 - off), l4 - l3 + 8) : Math.min(len - (l3 - off), 1232);
  const h = family === 4 ? 20 : 40;
  const icmp = l3 + h, quote = icmp + 8;
  b.copyWithin(quote, l3, l3 + quoteLen); // the quote moves forward over itself first: copyWithin is a memmove
  macsSwap(b, off);
  const icmpProto = family === 4 ? 1 : 58;
  ipHeaderWrite(b, l3, pkt, family, icmpProto, 8 + quoteLen);
  b[icmp] = family === 4 ? 3 : 1; // destination unreachable
  b[icmp + 1] = family === 4 ? 13 : 1; // administratively prohibited
  put16(b, icmp + 2, 0); put32(b, icmp + 4, 0);
  const end = quote + quoteLen;
  put16(b, icmp + 2, l4Checksum(b, l3, icmp, end, family, icmpProto));
  return end - off;
}

function macsSwap(b: Uint8Array, off: number): void {
  for (let k = 0; k < 6; k++) {
    const x = b[off + k];
    b[off + k] = b[off + 6 + k];
    b[off + 6 + k] = x;
  }
}
