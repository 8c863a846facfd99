// The switch, table-driven and root-free: each row is a frame sent into the
// real data plane on in-memory ports (the portOpener seam) -> the outcome it
// is counted as and the ports it leaves by. Between them the rows cover every
// outcome and every SpoofGuard rule (source MAC and address, RA guard, ARP
// sender, the uplink's limits, hairpin, no uplink, broadcast, multicast,
// VLANs); the last test checks that no outcome went untested. Replies
// (resets, ICMP errors) are checked byte by byte: addresses, tags, checksums.
import t from 'tap';
import { MemLab } from './memlab.js';
import { arpFrame, frameBuild } from '../src/packet/build.js';
import { PARSE, PKT, PKT_WORDS, TCP_ACK, TCP_RST, TCP_SYN, parseFrame } from '../src/packet/parse.js';
import { OUTCOME_NAMES } from '../src/packet/verdict.js';
import { STAGE_NAMES } from '../src/datapath/switch.js';
import { RS, RS_COUNT, SK, SK_COUNT } from '../src/flow/conntrack.js';
import { policyCompile } from '../src/policy/compile.js';
import { policyParse } from '../src/policy/load.js';
import { FLE, flowLogTake } from '../src/flow/flowLog.js';
import { FlowLogWriter } from '../src/control/flowLogWriter.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const MAC = { a: '02:60:00:00:00:01', b: '02:60:00:00:00:02', c: '02:60:00:00:00:03', router: '02:60:00:00:00:fe' };
const BCAST = 'ff:ff:ff:ff:ff:ff';

const POLICY = (opts: { withoutWebToApp?: boolean } = {}) => `
default: drop
spoofguard: true
workloads:
  a: { nic: twf-a, mac: "${MAC.a}", ips: [10.60.0.1, "fd60::1"], tags: [web], vlans: [100] }
  b: { nic: twf-b, mac: "${MAC.b}", ips: [10.60.0.2, "fd60::2"], tags: [app], vlans: [100] }
  c: { nic: twf-c, mac: "${MAC.c}", ips: [10.60.0.3, "fd60::3"], tags: [db] }
groups:
  web: { tags: [web] }
  app: { tags: [app] }
  db: { tags: [db] }
  routers: { tags: [web, app] }
sections:
  - name: s
    rules:
${opts.withoutWebToApp ? '' : '      - { id: web-to-app, from: web, to: app, services: [tcp/80, udp/53], action: allow }\n'}\
      - { id: web-app-refused, from: web, to: app, services: [tcp/8443, udp/8443], action: reject }
      - { id: web-to-db, from: web, to: db, services: [tcp/5432], action: reject }
      - { id: web-to-db-udp, from: web, to: db, services: [udp/9], action: allow }
      - { id: vrrp, from: routers, to: 224.0.0.18/32, services: [ip/vrrp], action: allow, appliedTo: [routers] }
      - { id: out, from: web, to: 203.0.113.0/24, services: [tcp/443], action: allow }
      - { id: lldp, from: any, to: any, services: [ether/lldp], action: allow, log: true }
`;

const tcp = (srcMac: string, dstMac: string, src: string, dst: string, dport: number, extra: Partial<Parameters<typeof frameBuild>[0]> = {}) =>
  frameBuild({ family: src.includes(':') ? 6 : 4, proto: 6, srcMac, dstMac, src, dst, sport: 40000, dport, flags: TCP_SYN, ...extra });
const udp = (srcMac: string, dstMac: string, src: string, dst: string, dport: number, extra: Partial<Parameters<typeof frameBuild>[0]> = {}) =>
  frameBuild({ family: src.includes(':') ? 6 : 4, proto: 17, srcMac, dstMac, src, dst, sport: 40000, dport, ...extra });
const vrrp = (srcMac: string, src: string) => frameBuild({ family: 4, proto: 112, srcMac, dstMac: '01:00:5e:00:00:12', src, dst: '224.0.0.18', ttl: 255, payload: new Uint8Array(20) });
/** A frame of another EtherType: Ethernet header and 46 bytes of payload. */
function etherFrame(srcMac: string, dstMac: string, ethertype: number): Uint8Array {
  const f = new Uint8Array(60);
  f.set(dstMac.split(':').map((h) => parseInt(h, 16)), 0);
  f.set(srcMac.split(':').map((h) => parseInt(h, 16)), 6);
  f[12] = ethertype >> 8; f[13] = ethertype & 255;
  return f;
}

type Row = [name: string, port: string, frame: Uint8Array, outcome: string, to: string[]];

const seen = new Set<string>();

function runRows(t: Tap.Test, lab: MemLab, rows: Row[]): void {
  for (const [name, port, frame, outcome, to] of rows) {
    const r = lab.send(port, frame);
    t.same({ outcome: r.outcome, to: [...r.to].sort() }, { outcome, to: [...to].sort() }, `${name}: ${outcome} -> [${to}]`);
    seen.add(r.outcome);
  }
}
declare namespace Tap { type Test = typeof t; }

t.test('unicast, policy, SpoofGuard, VLANs, ARP, broadcast and multicast', async (t) => {
  const lab = new MemLab(POLICY(), { uplink: 'twf-up' });
  t.teardown(() => lab.stop());
  runRows(t, lab, [
    ['allowed TCP a -> b', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80), 'forward', ['twf-b']],
    ['allowed TCP a -> b over IPv6', 'twf-a', tcp(MAC.a, MAC.b, 'fd60::1', 'fd60::2', 80), 'forward', ['twf-b']],
    ['a -> b on a port no rule allows', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 22), 'policy', []],
    ['a -> c rejected: a reset goes back out of a', 'twf-a', tcp(MAC.a, MAC.c, '10.60.0.1', '10.60.0.3', 5432), 'reject', ['twf-a']],
    ['a lone ACK with no connection', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 41000, flags: TCP_ACK }), 'invalid_state', []],
    ['a frame cut short', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80).slice(0, 30), 'malformed', []],
    ['a frame shorter than an Ethernet header', 'twf-a', new Uint8Array(10), 'malformed', []],
    // SpoofGuard at a vNIC
    ["a sends from b's MAC", 'twf-a', tcp(MAC.b, MAC.c, '10.60.0.1', '10.60.0.3', 5432), 'spoof', []],
    ["a sends from b's address", 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.2', '10.60.0.2', 80), 'spoof', []],
    ["a sends from b's IPv6 address", 'twf-a', tcp(MAC.a, MAC.b, 'fd60::2', 'fd60::2', 80), 'spoof', []],
    ['RA guard: a router advertisement from a VM', 'twf-a', frameBuild({ family: 6, proto: 58, srcMac: MAC.a, dstMac: '33:33:00:00:00:01', src: 'fe80::60:ff:fe00:1', dst: 'ff02::1', icmpType: 134, icmpBody: new Uint8Array(12), ttl: 255 }), 'spoof', []],
    ['a redirect from a VM', 'twf-a', frameBuild({ family: 6, proto: 58, srcMac: MAC.a, dstMac: MAC.b, src: 'fd60::1', dst: 'fd60::2', icmpType: 137, icmpBody: new Uint8Array(36), ttl: 255 }), 'spoof', []],
    ["ARP with b's MAC as the sender", 'twf-a', arpFrame({ srcMac: MAC.a, sha: MAC.b, op: 1, spa: '10.60.0.1', tpa: '10.60.0.2' }), 'spoof', []],
    ["ARP with b's address as the sender", 'twf-a', arpFrame({ srcMac: MAC.a, op: 1, spa: '10.60.0.2', tpa: '10.60.0.3' }), 'spoof', []],
    // SpoofGuard at the uplink
    ["a workload's address from the uplink", 'twf-up', tcp(MAC.router, MAC.b, '10.60.0.1', '10.60.0.2', 80), 'spoof', []],
    ["a vNIC's MAC from the uplink", 'twf-up', tcp(MAC.a, MAC.b, '198.51.100.7', '10.60.0.2', 80), 'spoof', []],
    ["an ARP claim of a workload's address from the uplink", 'twf-up', arpFrame({ srcMac: MAC.router, op: 2, spa: '10.60.0.2', tpa: '10.60.0.1', dstMac: MAC.a }), 'spoof', []],
    // Steering
    ['hairpin: a frame addressed back to its own port', 'twf-a', tcp(MAC.a, MAC.a, '10.60.0.1', '10.60.0.2', 80), 'no_route', []],
    ["to b's MAC with c's address", 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.3', 5432), 'misdirected', []],
    ["towards the uplink with a local workload's address", 'twf-a', tcp(MAC.a, MAC.router, '10.60.0.1', '10.60.0.2', 80), 'misdirected', []],
    ['allowed out to the internet through the uplink', 'twf-a', tcp(MAC.a, MAC.router, '10.60.0.1', '203.0.113.9', 443), 'forward', ['twf-up']],
    ['EtherType 0x88b5 with no ether/ rule', 'twf-a', etherFrame(MAC.a, MAC.b, 0x88b5), 'ethertype', []],
    ['LLDP, allowed by its ether/ rule, to its group: the uplink only', 'twf-a', etherFrame(MAC.a, '01:80:c2:00:00:0e', 0x88cc), 'forward', ['twf-up']],
    // VLANs
    ['tagged with a VLAN a does not declare', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { vlan: 200 }), 'vlan', []],
    ['tagged VLAN 100 to b, which declares it', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { vlan: 100, sport: 40100 }), 'forward', ['twf-b']],
    ['tagged VLAN 100 to c, which does not declare it', 'twf-a', udp(MAC.a, MAC.c, '10.60.0.1', '10.60.0.3', 9, { vlan: 100 }), 'vlan', []],
    // Broadcast and multicast
    ['ARP request for b: to b only', 'twf-a', arpFrame({ srcMac: MAC.a, op: 1, spa: '10.60.0.1', tpa: '10.60.0.2' }), 'forward', ['twf-b']],
    ['ARP request for an outside address: to the uplink', 'twf-a', arpFrame({ srcMac: MAC.a, op: 1, spa: '10.60.0.1', tpa: '10.60.0.254' }), 'forward', ['twf-up']],
    ['UDP broadcast that no rule allows', 'twf-a', udp(MAC.a, BCAST, '10.60.0.1', '255.255.255.255', 53), 'policy', []],
    ['VRRP to its group: b and the uplink take it, c does not', 'twf-a', vrrp(MAC.a, '10.60.0.1'), 'forward', ['twf-b', 'twf-up']],
    ['VRRP from b: a and the uplink', 'twf-b', vrrp(MAC.b, '10.60.0.2'), 'forward', ['twf-a', 'twf-up']],
    ["VRRP from c, whose egress has no rule for it", 'twf-c', vrrp(MAC.c, '10.60.0.3'), 'policy', []],
    ['VRRP from a router behind the uplink, which no ingress rule takes', 'twf-up', vrrp(MAC.router, '10.60.0.254'), 'policy', []],
  ]);
  t.equal(lab.dp.sw.groupRefused[lab.indexOf('twf-c')], 3, "c's ingress refused the VRRP packets of a, b and the router, counted at c");
  t.equal(lab.dp.sw.groupRefused[lab.indexOf('twf-b')], 1, "b's refused only the router's");
});

t.test('without an uplink, what is not a vNIC has no route', async (t) => {
  const lab = new MemLab(POLICY(), { uplink: null });
  t.teardown(() => lab.stop());
  runRows(t, lab, [
    ['to an unknown MAC', 'twf-a', tcp(MAC.a, MAC.router, '10.60.0.1', '203.0.113.9', 443), 'no_route', []],
    ['ARP for an outside address', 'twf-a', arpFrame({ srcMac: MAC.a, op: 1, spa: '10.60.0.1', tpa: '10.60.0.254' }), 'no_route', []],
    ['VRRP: b still takes it', 'twf-a', vrrp(MAC.a, '10.60.0.1'), 'forward', ['twf-b']],
    ['VRRP from c: nobody else may take it', 'twf-c', vrrp(MAC.c, '10.60.0.3'), 'policy', []],
  ]);
});

t.test('rate limits: ARP and neighbour discovery, and multicast, per port', async (t) => {
  const lab = new MemLab(POLICY(), { uplink: 'twf-up', dataplane: { resolutionRate: 1, resolutionBurst: 2, groupRate: 1, groupBurst: 2 } });
  t.teardown(() => lab.stop());
  const arp = arpFrame({ srcMac: MAC.a, op: 1, spa: '10.60.0.1', tpa: '10.60.0.2' });
  runRows(t, lab, [
    ['ARP 1', 'twf-a', arp, 'forward', ['twf-b']],
    ['ARP 2', 'twf-a', arp, 'forward', ['twf-b']],
    ['ARP 3: over the burst', 'twf-a', arp, 'rate_limit', []],
    ['VRRP 1', 'twf-a', vrrp(MAC.a, '10.60.0.1'), 'forward', ['twf-b', 'twf-up']],
    ['VRRP 2', 'twf-a', vrrp(MAC.a, '10.60.0.1'), 'forward', ['twf-b', 'twf-up']],
    ['VRRP 3: over the burst', 'twf-a', vrrp(MAC.a, '10.60.0.1'), 'rate_limit', []],
    ["b's own budget is untouched", 'twf-b', vrrp(MAC.b, '10.60.0.2'), 'forward', ['twf-a', 'twf-up']],
  ]);
});

t.test('the flow table: a quota per vNIC, and a table with no room', async (t) => {
  const quota = new MemLab(POLICY(), { uplink: 'twf-up', dataplane: { perPortQuota: 2 } });
  t.teardown(() => quota.stop());
  runRows(t, quota, [
    ['connection 1', 'twf-a', udp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 53, { sport: 1 }), 'forward', ['twf-b']],
    ['connection 2', 'twf-a', udp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 53, { sport: 2 }), 'forward', ['twf-b']],
  ]);
  // A third may evict one of a's own (unreplied UDP) or be refused: never one of another vNIC's.
  const third = quota.send('twf-a', udp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 53, { sport: 3 }));
  t.ok(third.outcome === 'forward' || third.outcome === 'quota', `a third connection from a: ${third.outcome}`);
  t.ok(quota.dp.table.ownerCount[quota.indexOf('twf-a')] <= 2, 'a holds at most its quota');
  // Established connections are not evicted for a new one: a full quota of them refuses the next.
  const est = new MemLab(POLICY(), { uplink: 'twf-up', dataplane: { perPortQuota: 1 } });
  t.teardown(() => est.stop());
  runRows(t, est, [
    ['a opens one', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 1 }), 'forward', ['twf-b']],
    ['b answers', 'twf-b', tcp(MAC.b, MAC.a, '10.60.0.2', '10.60.0.1', 1, { sport: 80, flags: TCP_SYN | TCP_ACK }), 'forward', ['twf-a']],
    ['a completes it', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 1, flags: TCP_ACK }), 'forward', ['twf-b']],
    ['a second one: over the quota', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 2 }), 'quota', []],
  ]);
  const full = new MemLab(POLICY(), { uplink: 'twf-up', dataplane: { flowCapacity: 16, perPortQuota: 1000 } });
  t.teardown(() => full.stop());
  let outcome = 'forward', opened = 0;
  for (let sport = 1; sport <= 64 && outcome === 'forward'; sport++) {
    // Established TCP connections: the table may not evict them.
    const syn = full.send('twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport }));
    outcome = syn.outcome;
    if (outcome !== 'forward') break;
    full.send('twf-b', tcp(MAC.b, MAC.a, '10.60.0.2', '10.60.0.1', sport, { sport: 80, flags: TCP_SYN | TCP_ACK }));
    full.send('twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport, flags: TCP_ACK }));
    opened++;
  }
  t.equal(outcome, 'table_full', `once ${opened} connections fill the table, the next is refused as table_full`);
  seen.add(outcome);
});

t.test('a connection the new policy denies is cut, and reset', async (t) => {
  const lab = new MemLab(POLICY(), { uplink: 'twf-up' });
  t.teardown(() => lab.stop());
  runRows(t, lab, [
    ['a opens a connection to b', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80), 'forward', ['twf-b']],
    ['b answers', 'twf-b', tcp(MAC.b, MAC.a, '10.60.0.2', '10.60.0.1', 40000, { sport: 80, flags: TCP_SYN | TCP_ACK }), 'forward', ['twf-a']],
  ]);
  lab.apply(POLICY({ withoutWebToApp: true }));
  runRows(t, lab, [
    ["a's next segment, after web-to-app is gone: cut, a reset back to a", 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { flags: TCP_ACK, seq: 1001, ack: 5001 }), 'cut', ['twf-a']],
  ]);
  const [rst] = lab.sentBy('twf-a');
  const r = replyOf(rst);
  t.same([r.src, r.dst, r.flags & (TCP_RST | TCP_ACK)], ['10.60.0.2', '10.60.0.1', TCP_RST], 'the reset comes from b to a, RST with the sequence a expects');
  t.equal(r.seq, 5001, 'its sequence number is the one a acknowledged');
});

/** A reply frame, parsed and its checksums checked. */
function replyOf(frame: Uint8Array): { src: string; dst: string; srcMac: string; dstMac: string; vlan: number; proto: number; flags: number; seq: number; icmpType: number; icmpCode: number; checksumsOk: boolean; quoted: Uint8Array } {
  const pkt = new Int32Array(PKT_WORDS);
  if (parseFrame(frame, 0, frame.length, pkt) !== PARSE.ip) throw new Error('the reply is not IP');
  const family = pkt[PKT.family], l3 = pkt[PKT.l3Offset], l4 = pkt[PKT.l4Offset], end = pkt[PKT.ipEnd];
  const hex = (o: number) => Array.from(frame.subarray(o, o + 6), (x) => x.toString(16).padStart(2, '0')).join(':');
  const sum = (from: number, to: number, acc = 0) => { for (let i = from; i < to; i += 2) acc += (frame[i] << 8) | (i + 1 < to ? frame[i + 1] : 0); return acc; };
  const fold = (acc: number) => { while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16); return acc; };
  const proto = pkt[PKT.proto];
  let ok: boolean;
  if (family === 4) {
    ok = fold(sum(l3, l3 + 20)) === 0xffff;
    ok = ok && fold(proto === 1 ? sum(l4, end) : sum(l4, end, sum(l3 + 12, l3 + 20) + proto + (end - l4))) === 0xffff;
  } else ok = fold(sum(l4, end, sum(l3 + 8, l3 + 40) + proto + (end - l4))) === 0xffff;
  const addr = (at: number) => family === 4 ? Array.from(frame.subarray(at, at + 4)).join('.') : Array.from({ length: 8 }, (_, k) => ((frame[at + 2 * k] << 8) | frame[at + 2 * k + 1]).toString(16)).join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
  return {
    src: addr(family === 4 ? l3 + 12 : l3 + 8), dst: addr(family === 4 ? l3 + 16 : l3 + 24), dstMac: hex(0), srcMac: hex(6),
    vlan: pkt[PKT.vlanCount] > 0 ? pkt[PKT.vlan] : -1, proto, flags: pkt[PKT.tcpFlags],
    seq: proto === 6 ? ((frame[l4 + 4] << 24) | (frame[l4 + 5] << 16) | (frame[l4 + 6] << 8) | frame[l4 + 7]) >>> 0 : 0,
    icmpType: pkt[PKT.icmpType], icmpCode: pkt[PKT.icmpCode], checksumsOk: ok, quoted: frame.slice(l4 + 8, end),
  };
}

t.test('replies are built over the rejected frame: addresses, VLAN tag, checksums', async (t) => {
  const lab = new MemLab(POLICY(), { uplink: 'twf-up' });
  t.teardown(() => lab.stop());
  const cases: Array<[string, Uint8Array, { proto: number; vlan: number; src: string; dst: string; icmp?: [number, number] }]> = [
    ['TCP SYN a -> c:5432', tcp(MAC.a, MAC.c, '10.60.0.1', '10.60.0.3', 5432, { seq: 777 }), { proto: 6, vlan: -1, src: '10.60.0.3', dst: '10.60.0.1' }],
    ['TCP SYN a -> b:8443 tagged VLAN 100', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 8443, { vlan: 100, seq: 777 }), { proto: 6, vlan: 100, src: '10.60.0.2', dst: '10.60.0.1' }],
    ['TCP SYN over IPv6, tagged', tcp(MAC.a, MAC.b, 'fd60::1', 'fd60::2', 8443, { vlan: 100, seq: 777 }), { proto: 6, vlan: 100, src: 'fd60::2', dst: 'fd60::1' }],
    ['UDP a -> b:8443 tagged', udp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 8443, { vlan: 100, payload: new Uint8Array(30).fill(7) }), { proto: 1, vlan: 100, src: '10.60.0.2', dst: '10.60.0.1', icmp: [3, 13] }],
    ['UDP over IPv6', udp(MAC.a, MAC.b, 'fd60::1', 'fd60::2', 8443, { payload: new Uint8Array(30).fill(7) }), { proto: 58, vlan: -1, src: 'fd60::2', dst: 'fd60::1', icmp: [1, 1] }],
  ];
  for (const [name, frame, want] of cases) {
    const original = frame.slice();
    const r = lab.send('twf-a', frame);
    t.same([r.outcome, r.to], ['reject', ['twf-a']], `${name}: rejected, answered out of a`);
    const sent = lab.sentBy('twf-a');
    t.equal(sent.length, 1, `${name}: one reply`);
    const reply = replyOf(sent[0]);
    t.same({ proto: reply.proto, vlan: reply.vlan, src: reply.src, dst: reply.dst }, { proto: want.proto, vlan: want.vlan, src: want.src, dst: want.dst }, `${name}: from the destination back to the sender, with the frame's VLAN tag`);
    t.same([reply.dstMac, reply.srcMac], [MAC.a, original.slice(0, 6).reduce((s, x, i) => s + (i ? ':' : '') + x.toString(16).padStart(2, '0'), '')], `${name}: MACs swapped`);
    t.ok(reply.checksumsOk, `${name}: IP and L4 checksums are right`);
    if (want.proto === 6) {
      t.equal(reply.flags & (TCP_RST | TCP_ACK), TCP_RST | TCP_ACK, `${name}: RST+ACK to a SYN`);
    } else {
      t.same([reply.icmpType, reply.icmpCode], want.icmp, `${name}: administratively prohibited`);
      // The quote starts with the rejected packet's IP header.
      const l3 = original[12] === 0x81 ? 18 : 14;
      t.same(Array.from(reply.quoted.subarray(0, 20)), Array.from(original.subarray(l3, l3 + 20)), `${name}: the quote is the rejected packet's own header`);
    }
  }
  runRows(t, lab, [
    ['no reply to a reset', 'twf-a', tcp(MAC.a, MAC.c, '10.60.0.1', '10.60.0.3', 5432, { flags: TCP_RST }), 'reject', []],
  ]);
});

t.test('EtherType rules are counted and logged like IP rules', async (t) => {
  const lab = new MemLab(POLICY(), { uplink: 'twf-up', dataplane: { flowLog: { rate: 100, burst: 100 } } });
  t.teardown(() => lab.stop());
  const order = lab.compiled.rules.findIndex((r) => r.id === 'lldp');
  for (let i = 0; i < 3; i++) t.equal(lab.send('twf-a', etherFrame(MAC.a, '01:80:c2:00:00:0e', 0x88cc)).outcome, 'forward', `LLDP ${i + 1} passes`);
  t.equal(lab.dp.ct.ruleStats[(order + 1) * RS_COUNT + RS.packets], 3, 'the lldp rule counted 3 packets');
  const events = flowLogTake(lab.dp.ct.flowLog!);
  t.equal(events.length, 3, 'and logged each (log: true)');
  t.same([events[0][FLE.family], events[0][FLE.proto], events[0][FLE.ruleOut]], [0, 0x88cc, order], 'as an EtherType, with the rule that decided');
  lab.send('twf-a', etherFrame(MAC.a, MAC.b, 0x88b5));
  const denied = flowLogTake(lab.dp.ct.flowLog!);
  t.same(denied.map((e) => [e[FLE.proto], e[FLE.ruleOut]]), [[0x88b5, -1]], 'an EtherType with no rule is logged as a denial with no rule');
});

t.test('one batch of mixed frames: every frame one outcome, and they add up', async (t) => {
  const lab = new MemLab(POLICY(), { uplink: 'twf-up' });
  t.teardown(() => lab.stop());
  const frames = [
    tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 41000 }),
    tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 41000 }), // its retransmission: a cache hit
    tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 22, { sport: 41001 }),
    tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 41002, flags: TCP_ACK }),
    new Uint8Array(10),
    etherFrame(MAC.a, '01:80:c2:00:00:0e', 0x88cc),
    vrrp(MAC.a, '10.60.0.1'),
  ];
  const a = lab.ports.get('twf-a')!;
  a.push(...frames);
  const hitsBefore = lab.dp.ct.counters[0], missesBefore = lab.dp.ct.counters[1];
  lab.dp.pump(lab.indexOf('twf-a'));
  const counts = lab.outcomesOf('twf-a');
  const named = Object.fromEntries(counts.map((v, k) => [OUTCOME_NAMES[k], v]).filter(([, v]) => v !== 0));
  t.same(named, { forward: 4, policy: 1, invalid_state: 1, malformed: 1 }, 'the outcomes of the seven frames, read in one batch');
  t.equal(counts.reduce((x, y) => x + y, 0), frames.length, 'received = the sum of the outcomes');
  t.same([lab.dp.ct.counters[0] - hitsBefore, lab.dp.ct.counters[1] - missesBefore], [1, 3], 'one cache hit (the retransmission), three misses, counted on the daemon\'s path');
  t.same(['twf-b', 'twf-up'].map((p) => lab.sentBy(p).length), [3, 2], 'b got two SYNs and the VRRP packet, the uplink LLDP and VRRP');
  // The stages, in order: [in, dropped] each. parse drops the cut-short frame; ip takes five (two SYNs, the
  // port-22 SYN and the lone ACK, VRRP) and drops two; ether takes LLDP.
  const stages = Object.fromEntries(STAGE_NAMES.map((name, k) => [name, [lab.dp.sw.stageCounts[k * 2], lab.dp.sw.stageCounts[k * 2 + 1]]]));
  t.same(stages, { parse: [7, 1], link: [6, 0], steering: [6, 0], resolution: [0, 0], ip: [5, 2], ether: [1, 0] }, 'each stage counted what it took in and dropped');
});

t.test('a flow-log line names the rule that decided, as it was when it decided', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-fl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lab = new MemLab(POLICY(), { uplink: 'twf-up', dataplane: { flowLog: { rate: 100, burst: 100 } } });
  t.teardown(() => lab.stop());
  const writer = new FlowLogWriter(lab.dp, lab.dp.ct.flowLog!, join(dir, 'flows.log'), false);
  lab.send('twf-a', etherFrame(MAC.a, '01:80:c2:00:00:0e', 0x88cc));
  // Before the ring is drained, a new policy puts another rule where lldp was (and renames lldp).
  const moved = POLICY().replace('  - name: s\n    rules:\n', '  - name: s\n    rules:\n      - { id: first, from: web, to: db, services: [tcp/1], action: allow }\n')
    .replace('id: lldp,', 'id: lldp-renamed,');
  lab.apply(moved);
  t.equal(lab.compiled.rules[6].id, 'out', 'the old number of lldp now means another rule');
  writer.stop();
  const lines = readFileSync(join(dir, 'flows.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.same(lines.map((l) => [l.rule, l.section, l.proto, l.ethertype, l.verdict]), [['lldp', 's', 'ether', '0x88cc', 'allow']], 'the line names lldp, the rule that let it through, with its EtherType');
});

t.test('a staged policy is evaluated on new connections only, never enforced, and its disagreements counted by kind', async (t) => {
  const lab = new MemLab(POLICY(), { uplink: 'twf-up' });
  t.teardown(() => lab.stop());
  // Staged: web-to-app gone (80 would be denied), tcp/22 allowed by a new rule, 5432 to db allowed by another rule id.
  const stagedText = POLICY().replace(/ {6}- \{ id: web-to-app[^\n]*\n/, '      - { id: ssh, from: web, to: app, services: [tcp/22], action: allow }\n')
    .replace('id: web-to-db, from: web, to: db, services: [tcp/5432], action: reject', 'id: db-open, from: web, to: db, services: [tcp/5432], action: reject');
  const staged = policyCompile(policyParse(stagedText, 'staged', { shadows: false }).policy!);
  lab.dp.setStaged(staged);
  runRows(t, lab, [
    ['web -> app:80, allowed now', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 50001 }), 'forward', ['twf-b']],
    ['its retransmission: a cache hit, not evaluated again', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 50001 }), 'forward', ['twf-b']],
    ['web -> app:22, refused now', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 22, { sport: 50002 }), 'policy', []],
    ['web -> db:5432, rejected now and staged (by a rule of another id)', 'twf-a', tcp(MAC.a, MAC.c, '10.60.0.1', '10.60.0.3', 5432, { sport: 50003 }), 'reject', ['twf-a']],
    ['web -> db:9, allowed by the same rule in both', 'twf-a', udp(MAC.a, MAC.c, '10.60.0.1', '10.60.0.3', 9, { sport: 50004 }), 'forward', ['twf-c']],
    ['a lone ACK to app:80: no connection either way, not a disagreement', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 50006, flags: TCP_ACK }), 'invalid_state', []],
  ]);
  const st = lab.dp.ct.stagedStats;
  const at = (id: string | null, kind: number) => st[(id === null ? 0 : staged.rules.findIndex((r) => r.id === id) + 1) * SK_COUNT + kind];
  t.same([at(null, SK.wouldDeny), at('ssh', SK.wouldAllow), at('db-open', SK.otherRule)], [1, 1, 1], 'would-deny by the default, would-allow by ssh, other-rule by db-open: once each');
  t.equal(st.reduce((a, b) => a + b, 0), 3, 'and nothing else (the retransmission and the agreeing connection are not counted)');
  lab.dp.setStaged(null);
  lab.send('twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 22, { sport: 50005 }));
  t.equal(lab.dp.ct.staged, null, 'unstaged: nothing is evaluated');
});

t.test("a staged policy's \"same rule\" follows the enforced rules to their new places, and a recompile of the same documents keeps the map", async (t) => {
  const lab = new MemLab(POLICY(), { uplink: 'twf-up' });
  t.teardown(() => lab.stop());
  const staged = policyCompile(policyParse(POLICY(), 'staged', { shadows: false }).policy!);
  lab.dp.setStaged(staged);
  // The enforced document gets a rule first: every enforced rule moves one place down, the staged ones stay.
  lab.apply(POLICY().replace('  - name: s\n    rules:\n', '  - name: s\n    rules:\n      - { id: first, from: web, to: db, services: [tcp/1], action: allow }\n'));
  const byId = (stagedPolicy: typeof staged) => stagedPolicy.rules.map((r) => { const i = lab.compiled.rules.findIndex((e) => e.id === r.id); return i < 0 ? -3 : i; });
  t.ok(byId(staged).every((i, k) => i === k + 1), 'every staged rule has its enforced namesake one place further');
  t.same(Array.from(lab.dp.ct.stagedToEnforced), byId(staged), 'the map names each staged rule its enforced namesake');
  runRows(t, lab, [
    ['web -> app:80, allowed by the same rule in both', 'twf-a', tcp(MAC.a, MAC.b, '10.60.0.1', '10.60.0.2', 80, { sport: 51001 }), 'forward', ['twf-b']],
    ['web -> db:9, allowed by the same rule in both', 'twf-a', udp(MAC.a, MAC.c, '10.60.0.1', '10.60.0.3', 9, { sport: 51002 }), 'forward', ['twf-c']],
  ]);
  t.equal(lab.dp.ct.stagedStats.reduce((a, b) => a + b, 0), 0, 'no disagreement counted: the same rules decided in both');
  // Enforced reloads of the other kinds, the map carried over each (checked against mapping every rule by id):
  // a rule removed and one moved to another section; then the removed one made again, in that other section.
  const withFirst = POLICY().replace('  - name: s\n    rules:\n', '  - name: s\n    rules:\n      - { id: first, from: web, to: db, services: [tcp/1], action: allow }\n');
  const outLine = '      - { id: out, from: web, to: 203.0.113.0/24, services: [tcp/443], action: allow }\n';
  const udpLine = '      - { id: web-to-db-udp, from: web, to: db, services: [udp/9], action: allow }\n';
  const removedAndMoved = withFirst.replace(udpLine, '').replace(outLine, '') + '  - name: t\n    rules:\n' + outLine;
  lab.apply(removedAndMoved);
  t.equal(lab.dp.ct.stagedToEnforced[staged.rules.findIndex((r) => r.id === 'web-to-db-udp')], -3, 'the removed rule has no namesake');
  t.same(Array.from(lab.dp.ct.stagedToEnforced), byId(staged), 'a rule removed and one moved to another section: the map is as by id');
  lab.apply(removedAndMoved + udpLine);
  t.same(Array.from(lab.dp.ct.stagedToEnforced), byId(staged), 'the removed rule made again: its staged namesake finds it');
  t.ok(lab.dp.ct.stagedToEnforced.every((i) => i >= 0), 'every staged rule has a namesake again');
  // The same enforced document compiled again (what a tag change does): the map is kept, not made again.
  const map = lab.dp.ct.stagedToEnforced;
  lab.dp.setPolicy(policyCompile(lab.compiled.policy, lab.compiled));
  t.equal(lab.dp.ct.stagedToEnforced, map, 'a recompile of the same documents keeps the map');
  // A staged document that moves its own rules: the map is made again.
  const reordered = policyCompile(policyParse(POLICY().replace('  - name: s\n    rules:\n', '  - name: s\n    rules:\n      - { id: staged-first, from: web, to: db, services: [tcp/2], action: allow }\n'), 'staged', { shadows: false }).policy!);
  lab.dp.setStaged(reordered);
  t.same(Array.from(lab.dp.ct.stagedToEnforced), byId(reordered), 'a new staged document is mapped again (its new rule to none)');
});

t.test('every outcome has a row', async (t) => {
  t.same(OUTCOME_NAMES.filter((o) => !seen.has(o)), [], 'no outcome went untested');
});

t.test("a policy swap takes a workload's new address, MAC or VLANs at once; a retag keeps them", async (t) => {
  const lab = new MemLab(POLICY(), { uplink: 'twf-up' });
  t.teardown(() => lab.stop());
  const webToApp = (src: string, srcMac = MAC.a) => tcp(srcMac, MAC.b, src, '10.60.0.2', 80);
  runRows(t, lab, [['a from its address', 'twf-a', webToApp('10.60.0.1'), 'forward', ['twf-b']]]);
  // A retag only (a's tags change, its addresses do not): the switch keeps its tables, the policy follows.
  lab.apply(POLICY().replace('tags: [web], vlans: [100]', 'tags: [web, prod], vlans: [100]'));
  runRows(t, lab, [
    ['a retagged, from its address', 'twf-a', webToApp('10.60.0.1'), 'forward', ['twf-b']],
    ['b still found by its address', 'twf-c', tcp(MAC.c, MAC.b, '10.60.0.3', '10.60.0.2', 80), 'policy', []],
  ]);
  // a moves to a new address: the old one is a spoof from now on, and b answers the new one.
  lab.apply(POLICY().replace('ips: [10.60.0.1, "fd60::1"]', 'ips: [10.60.0.9, "fd60::1"]'));
  runRows(t, lab, [
    ['a from its old address', 'twf-a', webToApp('10.60.0.1'), 'spoof', []],
    ['a from its new address', 'twf-a', webToApp('10.60.0.9'), 'forward', ['twf-b']],
  ]);
  // a gets a new MAC: frames from the old one are spoofs.
  lab.apply(POLICY().replace(`mac: "${MAC.a}"`, 'mac: "02:60:00:00:00:0a"'));
  runRows(t, lab, [
    ['a from its old MAC', 'twf-a', webToApp('10.60.0.1'), 'spoof', []],
    ['a from its new MAC', 'twf-a', webToApp('10.60.0.1', '02:60:00:00:00:0a'), 'forward', ['twf-b']],
  ]);
});
