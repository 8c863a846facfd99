// Frame parsing: every field, VLANs, IPv6 extension headers, fragments, ICMP
// errors, and truncated or random frames (a counted malformed, never a throw).
import t from 'tap';
import { frameBuild, ipPacket } from '../src/packet/build.js';
import { FRAG, ICMP, PARSE, PKT, PKT_WORDS, TCP_ACK, TCP_SYN, parseFrame } from '../src/packet/parse.js';
import { rng } from './rng.js';

const pkt = new Int32Array(PKT_WORDS);
const parse = (f: Uint8Array) => parseFrame(f, 0, f.length, pkt);
const ip4 = (s: string) => s.split('.').reduce((a, o) => (a << 8) | Number(o), 0);

t.test('IPv4 TCP', async (t) => {
  const f = frameBuild({ family: 4, src: '10.0.1.11', dst: '10.0.3.31', proto: 6, sport: 40000, dport: 5432, flags: TCP_SYN | TCP_ACK });
  t.equal(parse(f), PARSE.ip);
  t.same(
    [pkt[PKT.family], pkt[PKT.proto], pkt[PKT.src], pkt[PKT.dst], pkt[PKT.sport], pkt[PKT.dport], pkt[PKT.tcpFlags], pkt[PKT.length], pkt[PKT.vlan], pkt[PKT.fragment]],
    [4, 6, ip4('10.0.1.11'), ip4('10.0.3.31'), 40000, 5432, TCP_SYN | TCP_ACK, f.length, -1, FRAG.none],
  );
  t.same([pkt[PKT.src + 1], pkt[PKT.src + 2], pkt[PKT.dst + 3]], [0, 0, 0], 'unused address words are zero');
});

t.test('IPv4 header checksum is right (a kernel would accept the frame)', async (t) => {
  const ip = ipPacket({ family: 4, src: '192.0.2.1', dst: '198.51.100.2', proto: 17, sport: 1, dport: 2 });
  let acc = 0;
  for (let i = 0; i < 20; i += 2) acc += (ip[i] << 8) | ip[i + 1];
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  t.equal(acc, 0xffff);
});

t.test('802.1Q tag', async (t) => {
  const f = frameBuild({ vlan: 42, family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 17, sport: 53, dport: 5353 });
  t.equal(parse(f), PARSE.ip);
  t.same([pkt[PKT.vlan], pkt[PKT.sport], pkt[PKT.dport], pkt[PKT.l3Offset]], [42, 53, 5353, 18]);
});

t.test('IPv6 UDP, and a hop-by-hop extension header', async (t) => {
  const f = frameBuild({ family: 6, src: 'fd00:6::11', dst: 'fd00:6::31', proto: 17, sport: 1000, dport: 53 });
  t.equal(parse(f), PARSE.ip);
  t.same([pkt[PKT.family], pkt[PKT.proto], pkt[PKT.src], pkt[PKT.src + 3], pkt[PKT.dst + 3], pkt[PKT.dport]], [6, 17, (0xfd000006 | 0), 0x11, 0x31, 53]);
  // Insert an 8-byte hop-by-hop header in front of the UDP header.
  const ip = ipPacket({ family: 6, src: 'fd00::1', dst: 'fd00::2', proto: 17, sport: 7, dport: 9 });
  const withExt = new Uint8Array(14 + ip.length + 8);
  withExt.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
  withExt.set(ip.subarray(0, 40), 14);
  withExt[14 + 6] = 0; // next header: hop-by-hop
  const payloadLen = ip.length - 40 + 8;
  withExt[14 + 4] = payloadLen >> 8; withExt[14 + 5] = payloadLen & 255;
  withExt.set([17, 0, 1, 4, 0, 0, 0, 0], 54); // next: UDP, length 0 (8 bytes), PadN
  withExt.set(ip.subarray(40), 62);
  t.equal(parse(withExt), PARSE.ip);
  t.same([pkt[PKT.proto], pkt[PKT.sport], pkt[PKT.dport], pkt[PKT.l4Offset]], [17, 7, 9, 62]);
});

t.test('fragments: the first has ports, later ones are marked and have none', async (t) => {
  t.equal(parse(frameBuild({ family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 17, sport: 5, dport: 6, moreFragments: true, ipId: 77 })), PARSE.ip);
  t.same([pkt[PKT.fragment], pkt[PKT.fragmentId], pkt[PKT.sport]], [FRAG.first, 77, 5]);
  t.equal(parse(frameBuild({ family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 17, sport: 5, dport: 6, fragmentOffset: 185, ipId: 77 })), PARSE.ip);
  t.same([pkt[PKT.fragment], pkt[PKT.fragmentId], pkt[PKT.sport]], [FRAG.later, 77, 0]);
});

t.test('ICMP echo carries its identifier in both port fields; errors carry the quoted header', async (t) => {
  t.equal(parse(frameBuild({ family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 1, icmpType: 8, id: 0x1234 })), PARSE.ip);
  t.same([pkt[PKT.icmpClass], pkt[PKT.icmpType], pkt[PKT.sport], pkt[PKT.dport]], [ICMP.echoRequest, 8, 0x1234, 0x1234]);
  const quoted = ipPacket({ family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 17, sport: 4000, dport: 53 });
  t.equal(parse(frameBuild({ family: 4, src: '10.0.0.2', dst: '10.0.0.1', proto: 1, icmpType: 3, icmpCode: 3, payload: quoted.subarray(0, 28) })), PARSE.ip);
  t.same([pkt[PKT.icmpClass], pkt[PKT.innerProto], pkt[PKT.innerSrc], pkt[PKT.innerDst], pkt[PKT.innerSport], pkt[PKT.innerDport]],
    [ICMP.error, 17, ip4('10.0.0.1'), ip4('10.0.0.2'), 4000, 53]);
  const quoted6 = ipPacket({ family: 6, src: 'fd00::1', dst: 'fd00::2', proto: 6, sport: 4000, dport: 443 });
  t.equal(parse(frameBuild({ family: 6, src: 'fd00::2', dst: 'fd00::1', proto: 58, icmpType: 1, icmpCode: 4, payload: quoted6.subarray(0, 48) })), PARSE.ip);
  t.same([pkt[PKT.icmpClass], pkt[PKT.innerProto], pkt[PKT.innerSrc + 3], pkt[PKT.innerDport]], [ICMP.error, 6, 1, 443]);
});

t.test('ARP and other EtherTypes', async (t) => {
  const arp = new Uint8Array(42);
  arp.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06]);
  t.equal(parse(arp), PARSE.arp);
  t.equal(parse(arp.subarray(0, 30)), PARSE.malformed, 'a truncated ARP');
  const lldp = new Uint8Array(60);
  lldp.set([1, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc]);
  t.equal(parse(lldp), PARSE.otherEther);
  t.equal(pkt[PKT.ethertype], 0x88cc);
});

t.test('every truncation of valid frames is malformed or parsed, never a throw', async (t) => {
  const frames = [
    frameBuild({ family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 6, sport: 1, dport: 2, flags: TCP_SYN }),
    frameBuild({ family: 6, src: 'fd00::1', dst: 'fd00::2', proto: 17, sport: 1, dport: 2, vlan: 5 }),
    frameBuild({ family: 4, src: '10.0.0.2', dst: '10.0.0.1', proto: 1, icmpType: 3, payload: ipPacket({ family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 6, sport: 1, dport: 2 }).subarray(0, 28) }),
  ];
  let malformed = 0;
  for (const f of frames) {
    for (let len = 0; len < f.length; len++) {
      const r = parseFrame(f, 0, len, pkt);
      if (r === PARSE.malformed) malformed++;
    }
    t.equal(parseFrame(f, 0, f.length, pkt), PARSE.ip, 'the whole frame parses');
  }
  t.ok(malformed > 100, `truncated frames are malformed (${malformed})`);
  t.equal(parseFrame(frames[0], 10, frames[0].length, pkt), PARSE.malformed, 'a length past the buffer is malformed');
});

t.test('random bytes never throw', async (t) => {
  const r = rng(9);
  const buf = new Uint8Array(256);
  const seen = new Set<number>();
  for (let i = 0; i < 20000; i++) {
    for (let j = 0; j < buf.length; j++) buf[j] = Math.floor(r() * 256);
    // Steer a share of them into the IP parsers.
    if (i % 3 === 0) { buf[12] = 0x08; buf[13] = 0x00; buf[14] = 0x45; }
    if (i % 3 === 1) { buf[12] = 0x86; buf[13] = 0xdd; buf[14] = 0x60; }
    seen.add(parseFrame(buf, 0, 14 + Math.floor(r() * 242), pkt));
  }
  t.ok(seen.has(PARSE.malformed) && seen.has(PARSE.ip), `outcomes seen: ${[...seen].join(',')}`);
});
