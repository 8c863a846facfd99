// The flow table on its own: both directions, ports, removal, a random
// differential against a Map, quotas, a full table, and the eviction order.
import t from 'tap';
import { CT, ENTRY_WORDS, F, FC, FlowTable, INSERT_FULL, INSERT_QUOTA, flowInsert, flowLookup, flowRemove, flowSweep, flowCount, flowBytes } from '../src/flow/flowTable.js';
import { rng, randInt } from './rng.js';

const k = new Int32Array(8);
function tuple(src: number, dst: number): Int32Array {
  k.fill(0);
  k[0] = src; k[4] = dst;
  return k;
}
const lookup = (tb: FlowTable, src: number, dst: number, sp: number, dp: number, port: number, proto = 6) =>
  flowLookup(tb, tuple(src, dst), 0, 4, sp, dp, proto, 4, port);
const insert = (tb: FlowTable, src: number, dst: number, sp: number, dp: number, orig: number, reply: number, now = 0, state: number = CT.established) => {
  const e = flowInsert(tb, tuple(src, dst), 0, 4, sp, dp, 6, 4, orig, reply, false, now);
  if (e >= 0) tb.entries[e * ENTRY_WORDS + F.state] |= state;
  return e;
};

t.test('found from both directions, only on the right ports', async (t) => {
  const tb = new FlowTable({ capacity: 100, maxPorts: 8 });
  const e = insert(tb, 0x0a000001, 0x0a000002, 40000, 80, 1, 2);
  t.ok(e >= 0);
  t.equal(lookup(tb, 0x0a000001, 0x0a000002, 40000, 80, 1), e << 1, 'original direction');
  t.equal(lookup(tb, 0x0a000002, 0x0a000001, 80, 40000, 2), (e << 1) | 1, 'reply direction');
  t.equal(lookup(tb, 0x0a000001, 0x0a000002, 40000, 80, 2), -1, 'original tuple on the reply port');
  t.equal(lookup(tb, 0x0a000002, 0x0a000001, 80, 40000, 1), -1, 'reply tuple on the original port');
  t.equal(lookup(tb, 0x0a000001, 0x0a000002, 40000, 81, 1), -1, 'another port number');
  t.equal(lookup(tb, 0x0a000001, 0x0a000002, 40000, 80, 1, 17), -1, 'another protocol');
  // IPv6 and IPv4 with the same low words are different connections.
  t.equal(flowLookup(tb, tuple(0x0a000001, 0x0a000002), 0, 4, 40000, 80, 6, 6, 1), -1, 'another family');
  flowCount(tb, e, 0, 1500, 5);
  flowCount(tb, e, 1, 0xfffffff0, 6);
  flowCount(tb, e, 1, 0x20, 7);
  t.same([tb.entries[e * ENTRY_WORDS + F.packetsOrig], tb.entries[e * ENTRY_WORDS + F.packetsReply], flowBytes(tb, e, 0), flowBytes(tb, e, 1)], [1, 2, 1500, 0xfffffff0 + 0x20], 'byte counters carry past 32 bits');
  flowRemove(tb, e);
  t.equal(lookup(tb, 0x0a000001, 0x0a000002, 40000, 80, 1), -1, 'gone after removal');
  t.equal(tb.live, 0);
});

t.test('random inserts and removes agree with a Map', async (t) => {
  const tb = new FlowTable({ capacity: 2000, maxPorts: 4 });
  const model = new Map<string, number>();
  const r = rng(5);
  let checks = 0, bad = 0, inserted = 0, removed = 0;
  for (let step = 0; step < 40000; step++) {
    const src = randInt(r, 1, 60), dst = randInt(r, 1, 60), sp = randInt(r, 1, 20), dp = 80;
    const key = `${src}:${sp}>${dst}:${dp}`;
    const op = r();
    if (op < 0.45 && !model.has(key) && !model.has(`${dst}:${dp}>${src}:${sp}`) && tb.live < tb.capacity) {
      const e = insert(tb, src, dst, sp, dp, 0, 1);
      if (e >= 0) { model.set(key, e); inserted++; } else bad++;
    } else if (op < 0.7 && model.has(key)) {
      flowRemove(tb, model.get(key)!);
      removed++;
      model.delete(key);
    } else {
      checks++;
      const want = model.has(key) ? model.get(key)! << 1 : model.has(`${dst}:${dp}>${src}:${sp}`) ? -2 : -1;
      const got = lookup(tb, src, dst, sp, dp, 0);
      if (want === -2) { if (got !== -1) bad++; } // the reverse tuple exists, but on port 1
      else if (got !== want) bad++;
      const rev = model.has(key) ? lookup(tb, dst, src, dp, sp, 1) : -1;
      if (model.has(key) && rev !== ((model.get(key)! << 1) | 1)) bad++;
    }
  }
  t.equal(bad, 0, `${checks} lookups agree`);
  t.equal(tb.live, model.size, 'live count matches');
  t.same([tb.counters[FC.inserts], tb.counters[FC.removes]], [inserted, removed], `the insert and remove counters count each on its own (${inserted}, ${removed})`);
  t.equal(tb.counters[FC.refusedProbe], 0, 'no insert ran out of probe window at load <= 1/2');
});

t.test('per-port quota: a port over its quota evicts only its own closed, then half-open, then idle entries', async (t) => {
  const tb = new FlowTable({ capacity: 1000, perPortQuota: 3, maxPorts: 4, idleMs: 1000 });
  tb.timeouts.fill(1_000_000);
  const a = insert(tb, 1, 100, 1, 80, 0, 1, 0, CT.established);
  const b = insert(tb, 1, 100, 2, 80, 0, 1, 0, CT.synSent);
  const c = insert(tb, 1, 100, 3, 80, 0, 1, 0, CT.timeWait);
  const other = insert(tb, 2, 100, 1, 80, 2, 1, 0, CT.timeWait);
  t.ok(a >= 0 && b >= 0 && c >= 0 && other >= 0);
  t.equal(insert(tb, 1, 100, 4, 80, 0, 1, 10), 2, 'the closed entry (timeWait) made room first (its number is reused)');
  t.equal(lookup(tb, 1, 100, 3, 80, 0), -1, 'closed one evicted');
  t.ok(insert(tb, 1, 100, 5, 80, 0, 1, 10) >= 0, 'then the half-open one');
  t.equal(lookup(tb, 1, 100, 2, 80, 0), -1, 'half-open one evicted');
  t.ok(lookup(tb, 2, 100, 1, 80, 2) >= 0, "another port's closed entry is untouched");
  // Now: a (established, seen at 0), two new established seen at 10. All active at time 500.
  t.equal(insert(tb, 1, 100, 6, 80, 0, 1, 500), INSERT_QUOTA, 'active connections are not evicted: refused');
  t.equal(tb.counters[FC.refusedQuota], 1);
  // At time 2000, `a` has been idle for 2000 ms > idleMs: it goes.
  t.ok(insert(tb, 1, 100, 7, 80, 0, 1, 2000) >= 0, 'an idle established entry makes room');
  t.equal(lookup(tb, 1, 100, 1, 80, 0), -1);
  t.same([tb.counters[FC.evictedClosed], tb.counters[FC.evictedHalfOpen], tb.counters[FC.evictedIdle]], [1, 1, 1]);
  t.equal(tb.ownerCount[0], 3, 'the port never holds more than its quota');
});

t.test('a full table evicts anyone\'s closed entries, and refuses when all are active', async (t) => {
  const tb = new FlowTable({ capacity: 10, maxPorts: 4 });
  tb.timeouts.fill(1_000_000);
  for (let i = 0; i < 10; i++) t.ok(insert(tb, 1, 2, i, 80, i % 3, 3, 0, i === 7 ? CT.closed : CT.established) >= 0);
  t.ok(insert(tb, 1, 2, 100, 80, 0, 3, 1) >= 0, 'room made by evicting the closed entry');
  t.equal(lookup(tb, 1, 2, 7, 80, 1), -1, 'the closed one is gone');
  t.equal(insert(tb, 1, 2, 101, 80, 0, 3, 1), INSERT_FULL, 'all active: refused');
  t.equal(tb.counters[FC.refusedFull], 1);
  t.equal(tb.live, 10);
});

t.test('the sweep expires by state timeout, a bounded slice at a time', async (t) => {
  const tb = new FlowTable({ capacity: 64, maxPorts: 2 });
  tb.timeouts.fill(1000);
  tb.timeouts[CT.established] = 100_000;
  for (let i = 0; i < 40; i++) insert(tb, 1, 2, i, 80, 0, 1, 0, i < 20 ? CT.synSent : CT.established);
  t.equal(flowSweep(tb, 500, 64, null), 0, 'nothing expired yet');
  t.equal(flowSweep(tb, 5000, 10, null), 10, 'a slice of 10 entries');
  t.equal(flowSweep(tb, 5000, 64, null), 10, 'the rest of the synSent entries');
  t.equal(tb.live, 20);
  t.equal(tb.counters[FC.expired], 20);
});

t.test('one million flows fit in the documented memory', async (t) => {
  const tb = new FlowTable({ capacity: 1_000_000 });
  t.ok(tb.bytes <= 128 * 2 ** 20, `${(tb.bytes / 2 ** 20).toFixed(1)} MiB`);
});

t.test('name tables match the enums', async (t) => {
  const { CT_NAMES } = await import('../src/flow/flowTable.js');
  const { OUTCOME_NAMES, OUTCOME_COUNT, Outcome } = await import('../src/packet/verdict.js');
  // Every member of each enum, both ways: a swapped, missing or extra name fails.
  const members = (e: object) => Object.entries(e).filter(([, v]) => typeof v === 'number') as Array<[string, number]>;
  t.same(members(CT).map(([name, v]) => [CT_NAMES[v], v]), members(CT).map(([name, v]) => [name, v]), 'CT_NAMES[CT.x] is x for every state');
  t.equal(CT_NAMES.length, members(CT).length, 'and no name without a state');
  t.same(members(Outcome).map(([name, v]) => [OUTCOME_NAMES[v], v]), members(Outcome).map(([name, v]) => [name, v]), 'OUTCOME_NAMES[Outcome.x] is x for every outcome');
  t.equal(OUTCOME_NAMES.length, OUTCOME_COUNT, 'OUTCOME_COUNT names');
  t.equal(members(Outcome).length, OUTCOME_COUNT, 'and as many outcomes');
});
