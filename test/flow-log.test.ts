// The flow log ring: per-vNIC token buckets (rate and burst), suppressed
// counts, a full ring refusing rather than overwriting, events in order; and
// the connection tracker writing decisions (logged rules, default denials)
// and the close of a logged connection with its totals.
import t from 'tap';
import { FLE, FLK, FlowLog, flowLogDecision, flowLogTake } from '../src/flow/flowLog.js';
import { FlowTable } from '../src/flow/flowTable.js';
import { Conntrack, ctProcess, type FlowDecider } from '../src/flow/conntrack.js';
import { Verdict } from '../src/packet/verdict.js';
import { frameBuild } from '../src/packet/build.js';
import { PKT, PKT_WORDS, TCP_ACK, TCP_FIN, TCP_SYN, parseFrame } from '../src/packet/parse.js';
import { Outcome } from '../src/packet/verdict.js';

function packet(opts: { sport: number; dport: number; flags: number; reply?: boolean }): Int32Array {
  const pkt = new Int32Array(PKT_WORDS);
  const f = frameBuild({ family: 4, proto: 6, src: opts.reply ? '10.0.0.2' : '10.0.0.1', dst: opts.reply ? '10.0.0.1' : '10.0.0.2',
    sport: opts.reply ? opts.dport : opts.sport, dport: opts.reply ? opts.sport : opts.dport, flags: opts.flags });
  parseFrame(f, 0, f.length, pkt);
  return pkt;
}

t.test('rate limit per vNIC, suppressed counts, a full ring', async (t) => {
  const log = new FlowLog(4, 2, 1, 2); // 4 records, 2 ports, 1 per second, bursts of 2
  const pkt = packet({ sport: 1000, dport: 80, flags: TCP_SYN });
  for (let i = 0; i < 5; i++) flowLogDecision(log, pkt, 0, 0, 1, 3, -2, Outcome.policy, 1000, 1);
  t.equal(log.count, 2, 'a burst of 2 from port 0 is written');
  t.equal(log.suppressed[0], 3, 'the other 3 are counted as suppressed');
  flowLogDecision(log, pkt, 1, 1, 0, 3, -2, Outcome.policy, 1000, 1);
  t.equal(log.count, 3, 'port 1 has its own bucket');
  flowLogDecision(log, pkt, 0, 0, 1, 3, -2, Outcome.policy, 2000, 1);
  t.equal(log.count, 4, 'a second later port 0 may log one more');
  flowLogDecision(log, pkt, 1, 1, 0, 3, -2, Outcome.policy, 9000, 1);
  t.equal(log.count, 4, 'the ring is full: the event is not written over an older one');
  t.equal(log.suppressed[1], 1, 'and is counted as suppressed');
  const events = flowLogTake(log);
  t.same(events.map((e) => e[FLE.port]), [0, 0, 1, 0], 'events come out oldest first');
  t.equal(log.count, 0, 'and the ring is empty');
  flowLogDecision(log, pkt, 1, 1, 0, 3, -2, Outcome.policy, 12_000, 1);
  t.same(flowLogTake(log).map((e) => e[FLE.port]), [1], 'it wraps around');
});

t.test('the tracker logs decisions and the close of a logged connection', async (t) => {
  // Port 80 is allowed by rule 0 with log; port 81 allowed by rule 1 without; the rest: the default drops.
  const decider: FlowDecider = {
    decide(pkt, _o, _r, rules) {
      const dport = pkt[PKT.dport];
      rules[0] = dport === 80 ? 0 : dport === 81 ? 1 : -1;
      rules[1] = -2;
      return dport === 80 ? Verdict.allow | Verdict.log : dport === 81 ? Verdict.allow : Verdict.drop;
    },
  };
  const ct = new Conntrack(new FlowTable({ capacity: 64, maxPorts: 2 }), decider);
  ct.flowLog = new FlowLog(64, 2);
  const run = (sport: number, dport: number, flags: number, reply = false) =>
    ctProcess(ct, packet({ sport, dport, flags, reply }), reply ? 1 : 0, reply ? 0 : 1, 10);
  t.equal(run(5000, 80, TCP_SYN), Outcome.forward);
  run(5000, 80, TCP_SYN | TCP_ACK, true);
  run(5000, 80, TCP_ACK);
  run(5000, 80, TCP_FIN | TCP_ACK);
  run(5000, 80, TCP_FIN | TCP_ACK, true);
  run(5000, 80, TCP_ACK);
  t.equal(run(5001, 81, TCP_SYN), Outcome.forward, 'a connection on an unlogged rule');
  t.equal(run(5002, 99, TCP_SYN), Outcome.policy, 'a default drop');
  const events = flowLogTake(ct.flowLog);
  t.same(events.map((e) => [e[FLE.kind], e[FLE.dport], e[FLE.ruleOut], e[FLE.outcome]]), [
    [FLK.decision, 80, 0, Outcome.forward],
    [FLK.close, 80, 0, Outcome.forward],
    [FLK.decision, 99, -1, Outcome.policy],
  ], 'the logged open, its close, and the default drop; nothing for the unlogged rule');
  const close = events[1];
  t.same([close[FLE.packetsOrig], close[FLE.packetsReply]], [4, 2], 'the close carries the packets each way, the last ACK included');
  t.ok(close[FLE.bytesOrig] > 0 && close[FLE.bytesReply] > 0, 'and bytes');
});
