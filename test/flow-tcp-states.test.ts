// The TCP state machine of connection tracking as a table: every state x every
// flag combination that matters x both directions -> the next state, or -1
// (out of state: dropped as invalid_state in strict mode). Written from the
// state diagram in src/flow/conntrack.ts's header, not from its code.
import t from 'tap';
import { tcpNext } from '../src/flow/conntrack.js';
import { CT, FLAG } from '../src/flow/flowTable.js';
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../src/packet/parse.js';

const FLAGS: Array<[string, number]> = [
  ['none', 0], ['SYN', TCP_SYN], ['SYN+ACK', TCP_SYN | TCP_ACK], ['ACK', TCP_ACK],
  ['FIN+ACK', TCP_FIN | TCP_ACK], ['FIN', TCP_FIN], ['RST', TCP_RST], ['RST+ACK', TCP_RST | TCP_ACK],
];
const X = -1;
const { synSent: SS, synRecv: SR, established: E, finWait: FW, closing: C, timeWait: TW, closed: CL } = {
  synSent: CT.synSent, synRecv: CT.synRecv, established: CT.established, finWait: CT.finWait, closing: CT.closing, timeWait: CT.timeWait, closed: CT.closed,
};

// state, stateFlags, then per direction (original, reply) the next state for each of FLAGS in order.
const TABLE: Array<[string, number, number, number[], number[]]> = [
  ['synSent', SS, 0, [X, SS, X, X, X, X, CL, CL], [X, SR, SR, X, X, X, CL, CL]],
  ['synRecv', SR, 0, [X, SR, X, E, FW, X, CL, CL], [X, SR, SR, X, X, X, CL, CL]],
  ['established', E, 0, [E, X, X, E, FW, FW, CL, CL], [E, X, X, E, FW, FW, CL, CL]],
  ['finWait (the original side sent FIN)', FW, FLAG.finOrig, [FW, X, X, FW, FW, FW, CL, CL], [FW, X, X, FW, C, C, CL, CL]],
  ['finWait (the reply side sent FIN)', FW, FLAG.finReply, [FW, X, X, FW, C, C, CL, CL], [FW, X, X, FW, FW, FW, CL, CL]],
  ['closing', C, FLAG.finOrig | FLAG.finReply, [C, X, X, TW, C, C, CL, CL], [C, X, X, TW, C, C, CL, CL]],
  ['timeWait', TW, FLAG.finOrig | FLAG.finReply, [TW, SS, X, TW, TW, TW, CL, CL], [TW, X, X, TW, TW, TW, CL, CL]],
  ['closed', CL, 0, [X, SS, X, X, X, X, CL, CL], [X, X, X, X, X, X, CL, CL]],
];

t.test('TCP transitions: state x flags x direction', async (t) => {
  let rows = 0;
  for (const [name, state, stateFlags, orig, reply] of TABLE) {
    for (const [dir, expected] of [[0, orig], [1, reply]] as const) {
      const got = FLAGS.map(([, flags]) => tcpNext(state, flags, dir, stateFlags));
      t.same(got, expected, `${name}, ${dir === 0 ? 'original' : 'reply'} direction: ${FLAGS.map(([f], i) => `${f}->${expected[i]}`).join(' ')}`);
      rows += FLAGS.length;
    }
  }
  t.equal(rows, 128, 'every combination in the table was checked');
});
