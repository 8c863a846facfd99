/**
 * Answers for `reject` (and for connections a new policy cuts): a TCP reset,
 * or an ICMP / ICMPv6 "administratively prohibited" error quoting the packet,
 * sent back out of the port it came from, as if from its destination (as
 * Linux's REJECT does). Rate-limited per port by a token bucket: these are
 * built in the control path's style (they allocate), so a flood of denied
 * packets must not turn into a flood of allocations or replies.
 */
import { addressText } from '../policy/addresses.js';
import { frameBuild } from '../packet/build.js';
import { PKT, TCP_ACK, TCP_RST, TCP_SYN, TCP_FIN } from '../packet/parse.js';

export class ReplyLimiter {
  private tokens: number;
  private last = 0;
  constructor(private readonly perSecond = 100, private readonly burst = 100) {
    this.tokens = burst;
  }
  take(nowMs: number): boolean {
    this.tokens = Math.min(this.burst, this.tokens + ((nowMs - this.last) * this.perSecond) / 1000);
    this.last = nowMs;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

function macText(b: Uint8Array, o: number): string {
  return Array.from(b.subarray(o, o + 6), (x) => x.toString(16).padStart(2, '0')).join(':');
}

function words(pkt: Int32Array, at: number): number[] {
  return [pkt[at] >>> 0, pkt[at + 1] >>> 0, pkt[at + 2] >>> 0, pkt[at + 3] >>> 0];
}

/** The reply to a rejected packet (parsed into `pkt`, raw at buf[off..off+len)), or null if none is due. */
export function buildReject(buf: Uint8Array, off: number, len: number, pkt: Int32Array): Uint8Array | null {
  const family = pkt[PKT.family] === 6 ? 6 : 4;
  const src = addressText(family, words(pkt, PKT.src));
  const dst = addressText(family, words(pkt, PKT.dst));
  const frameSrcMac = macText(buf, off + 6), frameDstMac = macText(buf, off);
  const proto = pkt[PKT.proto];
  if (proto === 6) {
    const flags = pkt[PKT.tcpFlags];
    if ((flags & TCP_RST) !== 0) return null; // never answer a reset
    const l4 = pkt[PKT.l4Offset];
    const seq = ((buf[l4 + 4] << 24) | (buf[l4 + 5] << 16) | (buf[l4 + 6] << 8) | buf[l4 + 7]) >>> 0;
    const ack = ((buf[l4 + 8] << 24) | (buf[l4 + 9] << 16) | (buf[l4 + 10] << 8) | buf[l4 + 11]) >>> 0;
    const dataOff = (buf[l4 + 12] >> 4) * 4;
    const l3 = pkt[PKT.l3Offset];
    const ipEnd = family === 4 ? l3 + ((buf[l3 + 2] << 8) | buf[l3 + 3]) : l3 + 40 + ((buf[l3 + 4] << 8) | buf[l3 + 5]);
    const segLen = Math.max(0, ipEnd - l4 - dataOff) + ((flags & TCP_SYN) !== 0 ? 1 : 0) + ((flags & TCP_FIN) !== 0 ? 1 : 0);
    const hasAck = (flags & TCP_ACK) !== 0;
    return frameBuild({
      srcMac: frameDstMac, dstMac: frameSrcMac, family, src: dst, dst: src, proto: 6,
      sport: pkt[PKT.dport], dport: pkt[PKT.sport],
      flags: hasAck ? TCP_RST : TCP_RST | TCP_ACK,
      seq: hasAck ? ack : 0, ack: hasAck ? 0 : (seq + segLen) >>> 0,
    });
  }
  if ((family === 4 && proto === 1) || (family === 6 && proto === 58)) {
    const t = pkt[PKT.icmpType];
    // Never answer an ICMP error with another.
    if (family === 4 ? t === 3 || t === 4 || t === 5 || t === 11 || t === 12 : t < 128) return null;
  }
  // Quote the IP header and the first 8 bytes after it (IPv4), or as much as fits a minimum MTU (IPv6).
  const l3 = pkt[PKT.l3Offset];
  const quoteLen = family === 4 ? Math.min(len - (l3 - off), pkt[PKT.l4Offset] - l3 + 8) : Math.min(len - (l3 - off), 1232);
  const quoted = buf.slice(l3, l3 + quoteLen);
  return frameBuild({
    srcMac: frameDstMac, dstMac: frameSrcMac, family, src: dst, dst: src,
    proto: family === 4 ? 1 : 58,
    icmpType: family === 4 ? 3 : 1, icmpCode: family === 4 ? 13 : 1,
    payload: quoted,
  });
}
