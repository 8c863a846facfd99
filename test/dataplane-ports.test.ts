// vNICs come and go with the policy: a workload added to the policy gets a
// port at once, one removed is detached and its connections forgotten, one
// that comes back gets its old slot (and counters) again; no restart. Runs on
// in-memory ports (no root); the TAP case is in control-api.test.ts.
import t from 'tap';
import { MemLab } from './memlab.js';
import { frameBuild } from '../src/packet/build.js';
import { TCP_ACK, TCP_SYN } from '../src/packet/parse.js';
import { PC, PC_COUNT } from '../src/datapath/dataplane.js';

const vm = (name: string, n: number) => `  ${name}: { nic: twp-${name}, mac: "02:60:00:00:00:0${n}", ips: [10.60.0.${n}], tags: [vm] }`;
const policy = (names: string[]) => `
default: drop
workloads:
${names.map((n) => vm(n, n.charCodeAt(0) - 96)).join('\n')}
groups:
  vms: { tags: [vm] }
sections:
  - name: s
    rules:
      - { id: any-tcp, from: vms, to: vms, services: [tcp/80], action: allow }
`;
const syn = (from: string, to: string, flags = TCP_SYN) => frameBuild({ family: 4, proto: 6, srcMac: `02:60:00:00:00:0${from.charCodeAt(0) - 96}`, dstMac: `02:60:00:00:00:0${to.charCodeAt(0) - 96}`,
  src: `10.60.0.${from.charCodeAt(0) - 96}`, dst: `10.60.0.${to.charCodeAt(0) - 96}`, sport: 40000, dport: 80, flags });

t.test('workloads added, removed and returning', async (t) => {
  const lab = new MemLab(policy(['a', 'b']), { uplink: null });
  t.same(lab.dp.nics, ['twp-a', 'twp-b'], 'two vNICs at start');
  t.same(lab.send('twp-a', syn('a', 'b')), { outcome: 'forward', to: ['twp-b'] }, 'a -> b');
  t.equal(lab.dp.table.live, 1, 'one connection');

  lab.apply(policy(['a', 'b', 'c']));
  t.same(lab.dp.nics, ['twp-a', 'twp-b', 'twp-c'], 'c was added: its port is open');
  t.same(lab.send('twp-a', syn('a', 'c')), { outcome: 'forward', to: ['twp-c'] }, 'a -> c is delivered to the new port');
  t.same(lab.send('twp-c', syn('c', 'b')), { outcome: 'forward', to: ['twp-b'] }, 'and c sends, SpoofGuard and policy in force');

  const bSlot = lab.indexOf('twp-b');
  lab.apply(policy(['a', 'c']));
  t.same(lab.dp.nics, ['twp-a', 'twp-c'], 'b was removed: detached');
  t.equal(lab.dp.table.live, 1, "b's connections were forgotten, a -> c stays");
  t.same(lab.send('twp-a', syn('a', 'b', TCP_ACK)), { outcome: 'no_route', to: [] }, "b's MAC leads nowhere now (no uplink)");

  lab.apply(policy(['a', 'b', 'c']));
  t.equal(lab.indexOf('twp-b'), bSlot, 'b came back in its old slot');
  const tx = (slot: number) => lab.dp.portCounters[slot * PC_COUNT + PC.txPackets];
  t.equal(tx(bSlot), 2, 'with its counters (the two frames sent to it before)');
  t.same(lab.send('twp-b', syn('b', 'a')), { outcome: 'forward', to: ['twp-a'] }, 'and works');

  lab.apply(policy(['a', 'c']));
  lab.apply(policy(['a', 'c', 'd']));
  t.equal(lab.indexOf('twp-d'), bSlot, "d took b's free slot");
  t.equal(tx(bSlot) + lab.outcomesOf('twp-d').reduce((x, y) => x + y, 0), 0, 'with its counters from zero');
  t.equal(lab.dp.ports.length, 3, 'no slot was added for it');
  lab.stop();
});

t.test('a fair quota by default: one vNIC cannot take the flow table from the others', async (t) => {
  // 64 entries, three vNICs: each may hold 2 x 64 / 4 = 32.
  const lab = new MemLab(policy(['a', 'b', 'c']), { uplink: null, dataplane: { flowCapacity: 64 } });
  t.equal(lab.dp.table.quota, 32, 'the quota is derived from the capacity and the vNICs');
  // Established connections (a's SYN, b's SYN-ACK, a's ACK) are never evicted for a newcomer.
  const seg = (sport: number, flags: number, reply = false) => frameBuild({
    family: 4, proto: 6, srcMac: reply ? '02:60:00:00:00:02' : '02:60:00:00:00:01', dstMac: reply ? '02:60:00:00:00:01' : '02:60:00:00:00:02',
    src: reply ? '10.60.0.2' : '10.60.0.1', dst: reply ? '10.60.0.1' : '10.60.0.2', sport: reply ? 80 : sport, dport: reply ? sport : 80, flags,
  });
  const opened = Array.from({ length: 40 }, (_, i) => {
    const sport = 30000 + i;
    const first = lab.send('twp-a', seg(sport, TCP_SYN)).outcome;
    if (first !== 'forward') return first;
    lab.send('twp-b', seg(sport, TCP_SYN | TCP_ACK, true));
    return lab.send('twp-a', seg(sport, TCP_ACK)).outcome;
  });
  t.equal(opened.filter((o) => o === 'forward').length, 32, 'a opens 32 connections');
  t.same([...new Set(opened.slice(32))], ['quota'], 'and the rest are refused as over quota, counted');
  t.equal(lab.dp.table.ownerCount[lab.indexOf('twp-a')], 32, 'a holds its quota, no more');
  t.same(lab.send('twp-c', syn('c', 'b')), { outcome: 'forward', to: ['twp-b'] }, 'c still opens a connection');
  lab.apply(policy(['a', 'b', 'c', 'd']));
  t.equal(lab.dp.table.quota, 25, 'a fourth vNIC: the quota follows (2 x 64 / 5)');
  lab.stop();
});
