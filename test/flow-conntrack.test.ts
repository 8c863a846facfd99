// Connection tracking driven by real frames through the parser, with the
// three-tier example policy deciding new connections: handshakes and
// teardowns, out-of-state packets, timeouts on an injected clock, quotas and
// a full table, stateless rules, and policy changes that cut a connection.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { frameBuild, ipPacket, type FrameSpec } from '../src/packet/build.js';
import { PARSE, PKT, PKT_WORDS, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, parseFrame } from '../src/packet/parse.js';
import { Outcome, OUTCOME_NAMES } from '../src/packet/verdict.js';
import { policyLoad, policyFromData } from '../src/policy/load.js';
import { policyCompile } from '../src/policy/compile.js';
import { PolicyDecider } from '../src/datapath/decide.js';
import { CT, ENTRY_WORDS, F, FC, FlowTable, NO_PORT } from '../src/flow/flowTable.js';
import { CTC, Conntrack, RS, RS_COUNT, ctPolicyChanged, ctProcess, ctSweep, type ConntrackOptions } from '../src/flow/conntrack.js';

const example = fileURLToPath(new URL('../examples/three-tier.yaml', import.meta.url));
// Ports: 0 web-1, 1 web-2, 2 app-1, 3 db-1, 4 jump-1, 5 uplink.
const NICS = ['tw-web1', 'tw-web2', 'tw-app1', 'tw-db1', 'tw-jump1', ''];
const WEB1 = 0, WEB2 = 1, APP = 2, DB = 3, JUMP = 4, UPLINK = 5;
const IP: Record<number, string> = { [WEB1]: '10.0.1.11', [WEB2]: '10.0.1.12', [APP]: '10.0.2.21', [DB]: '10.0.3.31', [JUMP]: '10.0.9.5' };

function setup(opts: ConntrackOptions & { capacity?: number; quota?: number; tags?: Record<string, string[]> } = {}) {
  const { policy } = policyLoad(example);
  for (const [w, tags] of Object.entries(opts.tags ?? {})) policy.workloads.get(w)!.tags.push(...tags);
  const decider = new PolicyDecider(policyCompile(policy), NICS);
  const table = new FlowTable({ capacity: opts.capacity ?? 1024, perPortQuota: opts.quota, maxPorts: 8 });
  const ct = new Conntrack(table, decider, { uplinkPort: UPLINK, ...opts });
  const pkt = new Int32Array(PKT_WORDS);
  let now = 1000;
  /** Send one frame from port `from` to port `to`; returns the outcome's name. */
  const send = (from: number, to: number, spec: Omit<FrameSpec, 'family'> & { family?: 4 | 6 }): string => {
    const f = frameBuild({ family: 4, ...spec } as FrameSpec);
    if (parseFrame(f, 0, f.length, pkt) !== PARSE.ip) return 'unparsed';
    const o = ctProcess(ct, pkt, from, to, now);
    return OUTCOME_NAMES[o];
  };
  const tcp = (from: number, to: number, sport: number, dport: number, flags: number, srcIp = IP[from], dstIp = IP[to] ?? '203.0.113.9') =>
    send(from, to, { proto: 6, src: srcIp, dst: dstIp, sport, dport, flags });
  const stateOf = () => (ct.lastEntry >= 0 ? ct.table.entries[ct.lastEntry * ENTRY_WORDS + F.state] & 0xff : -1);
  return { ct, table, decider, send, tcp, stateOf, policy, advance: (ms: number) => { now += ms; }, now: () => now };
}

t.test('a TCP connection through handshake, data and FIN teardown', async (t) => {
  const { tcp, stateOf, table } = setup();
  t.equal(tcp(APP, DB, 40000, 5432, TCP_SYN), 'forward', 'SYN app -> db (allowed by app-to-db)');
  t.equal(stateOf(), CT.synSent);
  t.equal(tcp(DB, APP, 5432, 40000, TCP_SYN | TCP_ACK), 'forward', 'SYN-ACK back');
  t.equal(stateOf(), CT.synRecv);
  t.equal(tcp(APP, DB, 40000, 5432, TCP_ACK), 'forward', 'ACK');
  t.equal(stateOf(), CT.established);
  t.equal(tcp(DB, APP, 5432, 40000, TCP_ACK), 'forward', 'data back');
  t.equal(tcp(APP, DB, 40000, 5432, TCP_FIN | TCP_ACK), 'forward', 'FIN');
  t.equal(stateOf(), CT.finWait);
  t.equal(tcp(DB, APP, 5432, 40000, TCP_ACK), 'forward', 'ACK of the FIN');
  t.equal(stateOf(), CT.finWait);
  t.equal(tcp(DB, APP, 5432, 40000, TCP_FIN | TCP_ACK), 'forward', 'the other FIN');
  t.equal(stateOf(), CT.closing);
  t.equal(tcp(APP, DB, 40000, 5432, TCP_ACK), 'forward', 'last ACK');
  t.equal(stateOf(), CT.timeWait);
  t.equal(table.live, 1, 'one entry for both directions');
  const o = 0 * ENTRY_WORDS;
  t.same([table.entries[o + F.packetsOrig], table.entries[o + F.packetsReply]], [4, 4], 'per-direction packet counters');
  t.equal(tcp(APP, DB, 40000, 5432, TCP_SYN), 'forward', 'a new SYN on the same ports reopens it');
  t.equal(stateOf(), CT.synSent);
  t.equal(tcp(DB, APP, 5432, 40000, TCP_RST | TCP_ACK), 'forward', 'RST passes');
  t.equal(stateOf(), CT.closed);
});

t.test('packets that fit no state are dropped as invalid_state (strict)', async (t) => {
  const { tcp, send, ct } = setup();
  t.equal(tcp(APP, DB, 40001, 5432, TCP_ACK), 'invalid_state', 'a lone ACK with no connection');
  t.equal(tcp(APP, DB, 40002, 5432, TCP_SYN | TCP_ACK), 'invalid_state', 'a SYN-ACK with no SYN');
  t.equal(tcp(DB, APP, 5432, 40003, TCP_SYN | TCP_ACK), 'policy', 'a SYN-ACK the policy denies anyway is a policy drop');
  t.equal(tcp(APP, DB, 40004, 5432, TCP_SYN), 'forward');
  t.equal(tcp(APP, DB, 40004, 5432, TCP_ACK), 'invalid_state', 'ACK before the SYN-ACK');
  t.equal(tcp(DB, APP, 5432, 40004, TCP_ACK), 'invalid_state', 'a plain ACK instead of the SYN-ACK');
  t.equal(send(JUMP, APP, { proto: 1, src: IP[JUMP], dst: IP[APP], icmpType: 0, id: 7 }), 'policy', 'an echo reply the policy does not allow');
  t.equal(ct.table.live, 1, 'none of them opened a connection');
});

t.test('loose mode picks connections up mid-stream', async (t) => {
  const { tcp, stateOf, table } = setup({ loose: true });
  t.equal(tcp(APP, DB, 40001, 5432, TCP_ACK), 'forward', 'a lone ACK opens an established entry');
  t.equal(stateOf(), CT.established);
  t.equal(tcp(DB, APP, 5432, 40001, TCP_ACK), 'forward', 'and its reply passes');
  t.equal(tcp(APP, DB, 40001, 5432, TCP_SYN | TCP_ACK), 'forward', 'out-of-state packets pass in loose mode');
  t.equal(tcp(WEB1, DB, 40001, 5432, TCP_ACK), 'reject', 'the policy still applies');
  t.equal(table.live, 1);
});

t.test('UDP and ICMP echo are pseudo-connections; replies need the request', async (t) => {
  const { send, stateOf } = setup({
    tags: {},
  });
  // jump-1 may ping servers (admin-ssh includes ping).
  t.equal(send(JUMP, APP, { proto: 1, src: IP[JUMP], dst: IP[APP], icmpType: 8, id: 42 }), 'forward', 'echo request');
  t.equal(stateOf(), CT.icmpNew);
  t.equal(send(APP, JUMP, { proto: 1, src: IP[APP], dst: IP[JUMP], icmpType: 0, id: 42 }), 'forward', 'its reply (not allowed by any rule by itself)');
  t.equal(stateOf(), CT.icmpEstablished);
  t.equal(send(APP, JUMP, { proto: 1, src: IP[APP], dst: IP[JUMP], icmpType: 0, id: 43 }), 'policy', 'a reply to no request');
  t.equal(send(APP, JUMP, { proto: 1, src: IP[APP], dst: IP[JUMP], icmpType: 8, id: 42 }), 'invalid_state', 'a request in the reply direction of an echo flow');
});

t.test('UDP', async (t) => {
  const data = {
    default: 'drop',
    workloads: { a: { nic: 'tw-a', mac: '02:00:00:00:00:0a', ips: ['10.9.0.1'] }, b: { nic: 'tw-b', mac: '02:00:00:00:00:0b', ips: ['10.9.0.2'] } },
    groups: { a: { workloads: ['a'] }, b: { workloads: ['b'] } },
    sections: [{ name: 's', rules: [
      { id: 'dns', from: 'a', to: 'b', services: ['udp/53'], action: 'allow' },
      { id: 'icmp-back', from: 'b', to: 'a', services: ['icmp'], action: 'allow' },
    ] }],
  };
  const { policy } = policyFromData(data, 'udp');
  const ct = new Conntrack(new FlowTable({ capacity: 16, maxPorts: 4 }), new PolicyDecider(policyCompile(policy!), ['tw-a', 'tw-b']));
  const pkt = new Int32Array(PKT_WORDS);
  const run = (from: number, to: number, src: string, dst: string, sport: number, dport: number, now: number) => {
    const f = frameBuild({ family: 4, proto: 17, src, dst, sport, dport });
    parseFrame(f, 0, f.length, pkt);
    return ctProcess(ct, pkt, from, to, now);
  };
  t.equal(run(0, 1, '10.9.0.1', '10.9.0.2', 5000, 53, 0), Outcome.forward, 'query');
  t.equal(ct.table.entries[F.state] & 0xff, CT.udpNew);
  t.equal(run(1, 0, '10.9.0.2', '10.9.0.1', 53, 5000, 10), Outcome.forward, 'answer');
  t.equal(ct.table.entries[F.state] & 0xff, CT.udpEstablished);
  t.equal(run(1, 0, '10.9.0.2', '10.9.0.1', 53, 5001, 10), Outcome.policy, 'an unsolicited "answer" is classified, and dropped');
  const error = (sport: number) => {
    const quoted = ipPacket({ family: 4, proto: 17, src: '10.9.0.1', dst: '10.9.0.2', sport, dport: 53 }).subarray(0, 28);
    const f = frameBuild({ family: 4, proto: 1, src: '10.9.0.2', dst: '10.9.0.1', icmpType: 3, icmpCode: 3, payload: quoted });
    parseFrame(f, 0, f.length, pkt);
    return ctProcess(ct, pkt, 1, 0, 20);
  };
  t.equal(error(5000), Outcome.forward, 'an ICMP error about the query is related');
  t.equal(error(5999), Outcome.invalid_state, 'one about no query is out of state, even where a stateful rule allows ICMP');
  // UDP pseudo-connections expire after 120 s once answered.
  ctSweep(ct, 10 + 121_000, 16);
  t.equal(ct.table.live, 0, 'expired');
  t.equal(run(1, 0, '10.9.0.2', '10.9.0.1', 53, 5000, 10 + 121_001), Outcome.policy, 'after expiry the answer direction is on its own');
});

t.test('ICMP errors quoting a tracked connection are related', async (t) => {
  const { tcp, send, ct } = setup();
  t.equal(tcp(APP, DB, 40000, 5432, TCP_SYN), 'forward');
  const quoted = ipPacket({ family: 4, src: IP[APP], dst: IP[DB], proto: 6, sport: 40000, dport: 5432, flags: TCP_SYN }).subarray(0, 28);
  t.equal(send(DB, APP, { proto: 1, src: IP[DB], dst: IP[APP], icmpType: 3, icmpCode: 3, payload: quoted }), 'forward', 'port unreachable back to the sender');
  t.equal(ct.counters[CTC.related], 1);
  t.equal(send(APP, DB, { proto: 1, src: IP[APP], dst: IP[DB], icmpType: 3, icmpCode: 3, payload: quoted }), 'policy', 'the same error from the wrong side is not related: the policy drops it');
  const other = ipPacket({ family: 4, src: IP[APP], dst: IP[DB], proto: 6, sport: 40999, dport: 5432 }).subarray(0, 28);
  t.equal(send(DB, APP, { proto: 1, src: IP[DB], dst: IP[APP], icmpType: 3, icmpCode: 3, payload: other }), 'policy', 'an error about no tracked connection: the policy drops it');
});

t.test('timeouts on an injected clock', async (t) => {
  const { tcp, stateOf, ct, advance, now } = setup({ timeouts: { synSent: 5, established: 100 } });
  t.equal(tcp(APP, DB, 40000, 5432, TCP_SYN), 'forward');
  advance(6000);
  t.equal(ctSweep(ct, now(), 1024), 1, 'the half-open connection expired after 5 s');
  t.equal(tcp(DB, APP, 5432, 40000, TCP_SYN | TCP_ACK), 'policy', 'its late SYN-ACK has no connection: the policy (db -> app) drops it');
  t.equal(tcp(APP, DB, 40001, 5432, TCP_SYN), 'forward');
  t.equal(tcp(DB, APP, 5432, 40001, TCP_SYN | TCP_ACK), 'forward');
  t.equal(tcp(APP, DB, 40001, 5432, TCP_ACK), 'forward');
  t.equal(stateOf(), CT.established);
  advance(99_000);
  t.equal(ctSweep(ct, now(), 1024), 0, 'established survives 99 s of silence');
  t.equal(tcp(DB, APP, 5432, 40001, TCP_ACK), 'forward', 'and carries on');
  advance(101_000);
  t.equal(ctSweep(ct, now(), 1024), 1, 'but not 101 s');
  t.equal(ct.table.counters[FC.expired], 2);
});

t.test('a VM at its quota cannot take the table from the others', async (t) => {
  const { tcp, table } = setup({ capacity: 64, quota: 10 });
  let forwarded = 0;
  for (let p = 0; p < 200; p++) if (tcp(WEB1, APP, 10000 + p, 8080, TCP_SYN) === 'forward') forwarded++;
  t.equal(forwarded, 200, 'its SYN flood churns its own half-open entries (oldest evicted first)');
  t.equal(table.ownerCount[WEB1], 10, 'but it never holds more than its quota');
  t.equal(table.counters[FC.evictedHalfOpen], 190);
  t.equal(tcp(APP, DB, 40000, 5432, TCP_SYN), 'forward', 'app-1 still opens connections');
  // Established connections are not evicted for a newcomer over quota.
  const { tcp: tcp2, table: table2 } = setup({ capacity: 64, quota: 2 });
  for (const p of [1, 2]) {
    tcp2(WEB1, APP, p, 8080, TCP_SYN); tcp2(APP, WEB1, 8080, p, TCP_SYN | TCP_ACK); tcp2(WEB1, APP, p, 8080, TCP_ACK);
  }
  t.equal(tcp2(WEB1, APP, 3, 8080, TCP_SYN), 'quota', 'refused, counted as quota');
  t.equal(table2.counters[FC.refusedQuota], 1);
  t.equal(tcp2(WEB1, APP, 1, 8080, TCP_ACK), 'forward', 'the established ones keep flowing');
});

t.test('a full table refuses new connections with table_full', async (t) => {
  const { tcp } = setup({ capacity: 4 });
  for (let p = 0; p < 4; p++) {
    tcp(APP, DB, p, 5432, TCP_SYN); tcp(DB, APP, 5432, p, TCP_SYN | TCP_ACK); tcp(APP, DB, p, 5432, TCP_ACK);
  }
  t.equal(tcp(JUMP, DB, 5555, 22, TCP_SYN), 'table_full');
});

t.test('stateless rules bypass tracking', async (t) => {
  const data = {
    default: 'drop',
    workloads: { a: { nic: 'tw-a', mac: '02:00:00:00:00:0a', ips: ['10.9.0.1'] }, b: { nic: 'tw-b', mac: '02:00:00:00:00:0b', ips: ['10.9.0.2'] } },
    groups: { a: { workloads: ['a'] }, b: { workloads: ['b'] } },
    sections: [{ name: 's', rules: [
      { id: 'a-to-b', from: 'a', to: 'b', services: ['tcp/80'], action: 'allow', stateless: true },
      { id: 'b-to-a', from: 'b', to: 'a', services: ['tcp/1024-65535'], action: 'allow', stateless: true },
    ] }],
  };
  const { policy } = policyFromData(data, 'stateless');
  const ct = new Conntrack(new FlowTable({ capacity: 16, maxPorts: 4 }), new PolicyDecider(policyCompile(policy!), ['tw-a', 'tw-b']));
  const pkt = new Int32Array(PKT_WORDS);
  const run = (from: number, src: string, dst: string, sport: number, dport: number, flags: number) => {
    const f = frameBuild({ family: 4, proto: 6, src, dst, sport, dport, flags });
    parseFrame(f, 0, f.length, pkt);
    return ctProcess(ct, pkt, from, 1 - from, 0);
  };
  t.equal(run(0, '10.9.0.1', '10.9.0.2', 40000, 80, TCP_ACK), Outcome.forward, 'a mid-stream ACK passes: no state check');
  t.equal(run(1, '10.9.0.2', '10.9.0.1', 80, 40000, TCP_SYN | TCP_ACK), Outcome.forward, 'the reply passes by its own rule');
  t.equal(run(1, '10.9.0.2', '10.9.0.1', 80, 22, TCP_ACK), Outcome.policy, 'a reply its rule does not cover is dropped');
  t.equal(ct.table.live, 0, 'nothing tracked');
  t.equal(ct.counters[CTC.stateless], 2);
});

t.test('a new policy cuts established connections it denies, and only those', async (t) => {
  const { tcp, ct, decider, policy } = setup();
  for (const [from, to, sp, dp] of [[APP, DB, 40000, 5432], [WEB1, APP, 40000, 8080], [WEB2, APP, 40001, 8080]] as const) {
    tcp(from, to, sp, dp, TCP_SYN); tcp(to, from, dp, sp, TCP_SYN | TCP_ACK); t.equal(tcp(from, to, sp, dp, TCP_ACK), 'forward');
  }
  // Quarantine web-1: a tag change is a new policy.
  policy.workloads.get('web-1')!.tags.push('quarantine');
  decider.setPolicy(policyCompile(policy));
  ctPolicyChanged(ct);
  t.equal(tcp(WEB1, APP, 40000, 8080, TCP_ACK), 'cut', "web-1's open connection is cut on its next packet");
  t.equal(tcp(APP, WEB1, 8080, 40000, TCP_ACK), 'cut', 'in both directions, and stays cut');
  t.equal(tcp(WEB2, APP, 40001, 8080, TCP_ACK), 'forward', "web-2's connection (allowed by both policies) keeps flowing");
  t.equal(tcp(DB, APP, 5432, 40000, TCP_ACK), 'forward', 'so does app -> db');
  t.equal(tcp(WEB1, APP, 40002, 8080, TCP_SYN), 'policy', 'new connections from web-1 are dropped by the policy');
  t.equal(ct.counters[CTC.cut], 1);
  // The background sweep cuts before the next packet, too.
  policy.workloads.get('app-1')!.tags.push('quarantine');
  decider.setPolicy(policyCompile(policy));
  ctPolicyChanged(ct);
  ctSweep(ct, 2000, 1024);
  const states = [0, 1, 2].map((e) => ct.table.entries[e * ENTRY_WORDS + F.state] & 0xff);
  t.same(states, [CT.cut, CT.free, CT.cut], 'the sweep re-decided every entry: it cut those the new policy denies, and forgot the one cut before (it is judged afresh)');
  t.equal(tcp(DB, APP, 5432, 40000, TCP_ACK), 'cut');
});

t.test('a quarantine lifted holds at once, also for a connection it had cut (regression: cut entries stayed cut 10 s)', async (t) => {
  const { tcp, send, ct, decider, policy } = setup();
  tcp(WEB1, APP, 40000, 8080, TCP_SYN); tcp(APP, WEB1, 8080, 40000, TCP_SYN | TCP_ACK); t.equal(tcp(WEB1, APP, 40000, 8080, TCP_ACK), 'forward');
  policy.workloads.get('web-1')!.tags.push('quarantine');
  decider.setPolicy(policyCompile(policy)); ctPolicyChanged(ct);
  t.equal(tcp(WEB1, APP, 40000, 8080, TCP_ACK), 'cut', 'quarantined: cut');
  t.equal(tcp(WEB1, APP, 40000, 8080, TCP_SYN), 'cut', 'a new SYN on the same ports is cut too while the quarantine holds');
  policy.workloads.get('web-1')!.tags.pop();
  decider.setPolicy(policyCompile(policy)); ctPolicyChanged(ct);
  t.equal(tcp(WEB1, APP, 40000, 8080, TCP_SYN), 'forward', 'lifted: the same ports connect again at once');
  t.equal(tcp(APP, WEB1, 8080, 40000, TCP_SYN | TCP_ACK), 'forward', 'and the connection opens');
  // A related ICMP error that quotes a connection cut under an older policy is no longer held as cut either.
  policy.workloads.get('web-1')!.tags.push('quarantine');
  decider.setPolicy(policyCompile(policy)); ctPolicyChanged(ct);
  t.equal(tcp(WEB1, APP, 40000, 8080, TCP_ACK), 'cut');
  policy.workloads.get('web-1')!.tags.pop();
  decider.setPolicy(policyCompile(policy)); ctPolicyChanged(ct);
  const quoted = ipPacket({ family: 4, src: IP[WEB1], dst: IP[APP], proto: 6, sport: 40000, dport: 8080 }).subarray(0, 28);
  t.equal(send(APP, WEB1, { proto: 1, src: IP[APP], dst: IP[WEB1], icmpType: 3, icmpCode: 3, payload: quoted }), 'policy', 'the error is judged by the policy (no connection any more), not dropped as cut');
});

t.test('frames from the uplink are charged to the vNIC they reach', async (t) => {
  const { tcp, table } = setup({ quota: 3 });
  for (let p = 0; p < 5; p++) t.equal(tcp(UPLINK, WEB1, 50000 + p, 443, TCP_SYN, '203.0.113.9', IP[WEB1]), 'forward');
  t.equal(table.ownerCount[WEB1], 3, "web-1's quota holds connections from outside");
  t.equal(table.ownerCount[UPLINK], 0);
  t.equal(tcp(UPLINK, NO_PORT as number, 50000, 443, TCP_SYN, '203.0.113.9', '198.51.100.1'), 'policy', 'uplink to nowhere is never allowed');
});

t.test('per-rule counters count what a rule let through or stopped, never what it could not open', async (t) => {
  const { tcp, ct, decider } = setup();
  ct.ruleStats = new Float64Array((decider.policy.rules.length + 1) * RS_COUNT);
  const order = decider.policy.rules.findIndex((r) => r.id === 'app-to-db');
  const stat = (k: RS) => ct.ruleStats[(order + 1) * RS_COUNT + k];
  for (let i = 0; i < 5; i++) t.equal(tcp(APP, DB, 41000 + i, 5432, TCP_ACK), 'invalid_state', `lone ACK ${i + 1}`);
  t.same([stat(RS.packets), stat(RS.connections)], [0, 0], 'five lone ACKs add nothing to app-to-db (they were never allowed)');
  t.equal(tcp(APP, DB, 41100, 5432, TCP_SYN), 'forward', 'a SYN opens a connection');
  t.same([stat(RS.packets), stat(RS.connections)], [1, 1], 'it counts one packet and one connection for app-to-db');
  const hits = ct.counters[CTC.hits], misses = ct.counters[CTC.misses];
  t.equal(tcp(DB, APP, 5432, 41100, TCP_SYN | TCP_ACK), 'forward', 'the SYN-ACK');
  t.equal(tcp(APP, DB, 41100, 5432, TCP_ACK), 'forward', 'the ACK');
  t.same([ct.counters[CTC.hits] - hits, ct.counters[CTC.misses] - misses], [2, 0], 'two packets that found their connection: two hits, counted in ctProcess (the path the daemon runs)');
  t.same([stat(RS.packets), stat(RS.connections)], [3, 1], 'and they count as packets of the connection, not as connections');
});
