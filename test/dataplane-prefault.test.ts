// A swap's rule-counter work done ahead of it (Dataplane.prefault): runs of
// rules that moved together, the new table with its pages present, whether
// every rule stays. Two data planes with the same counters take the same
// new policy, one through prefault and one without: the counters after the
// swap and the retired rules' counts must be the same, whatever the edit
// (rules inserted, removed, moved in blocks, moved to another section, a
// comment changed), and a prefault made for another policy is not used.
import t from 'tap';
import { Dataplane, type RuleCount } from '../src/datapath/dataplane.js';
import { MemoryPort } from '../src/io/memoryPort.js';
import { RS_COUNT } from '../src/flow/conntrack.js';
import { policyCompile, type CompiledPolicy } from '../src/policy/compile.js';
import { policyParse } from '../src/policy/load.js';
import { rulePlaces, startingPolicy } from '../src/policy/model.js';
import { randInt, rng } from './rng.js';

interface RuleText { id: string; from: string; to: string; services: string[]; action: string; comment?: string }

function compile(sections: Array<{ name: string; rules: RuleText[] }>): CompiledPolicy {
  const text = JSON.stringify({
    default: 'drop',
    workloads: { a: { nic: 'twp-a', mac: '02:00:00:00:73:01', ips: ['10.73.0.1'] }, b: { nic: 'twp-b', mac: '02:00:00:00:73:02', ips: ['10.73.0.2'] } },
    sections,
  });
  const parsed = policyParse(text, 'p.json', { shadows: false });
  if (!parsed.policy) throw new Error(parsed.problems.map((p) => p.message).join('; '));
  return policyCompile(parsed.policy);
}

function lab(first: CompiledPolicy): { dp: Dataplane; retired: RuleCount[]; before: Float64Array } {
  const retired: RuleCount[] = [];
  const dp = new Dataplane(policyCompile(startingPolicy()), [], {
    flowCapacity: 256,
    portOpener: (s) => new MemoryPort(s.name, false),
    onRulesRetired: (c) => retired.push(...c),
  });
  dp.setPolicy(first);
  // Counters every rule can be told apart by (row 0 is the default action's); a few rules never hit.
  const s = dp.ct.ruleStats;
  for (let row = 0; row < s.length / RS_COUNT; row++) {
    if (row % 7 === 3) continue;
    for (let k = 0; k < RS_COUNT; k++) s[row * RS_COUNT + k] = row * 10 + k + 1;
  }
  return { dp, retired, before: s.slice() };
}

/** The next document: a random edit of `sections` (rules keep their ids, so a moved rule is the same rule). */
function edit(r: () => number, sections: Array<{ name: string; rules: RuleText[] }>, fresh: () => RuleText): Array<{ name: string; rules: RuleText[] }> {
  const out = sections.map((s) => ({ name: s.name, rules: [...s.rules] }));
  const kind = randInt(r, 0, 5);
  const s = out[randInt(r, 0, out.length - 1)];
  if (kind === 0) s.rules.splice(randInt(r, 0, s.rules.length), 0, fresh()); // one inserted
  else if (kind === 1 && s.rules.length > 2) s.rules.splice(randInt(r, 0, s.rules.length - 2), randInt(r, 1, 2)); // removed
  else if (kind === 2 && s.rules.length > 4) { // a block moved
    const at = randInt(r, 0, s.rules.length - 3), block = s.rules.splice(at, 3);
    s.rules.splice(randInt(r, 0, s.rules.length), 0, ...block);
  } else if (kind === 3 && out[0].rules.length > 0) { // a rule moved to the other section
    const [rule] = out[0].rules.splice(randInt(r, 0, out[0].rules.length - 1), 1);
    out[1].rules.splice(randInt(r, 0, out[1].rules.length), 0, rule);
  } else if (kind === 4 && s.rules.length > 0) { // a comment changed: every rule where it was
    const i = randInt(r, 0, s.rules.length - 1);
    s.rules[i] = { ...s.rules[i], comment: `changed ${randInt(r, 0, 1e6)}` };
  } else { // several at once: inserted at the top, one removed further down
    s.rules.unshift(fresh(), fresh());
    if (s.rules.length > 5) s.rules.splice(randInt(r, 3, s.rules.length - 1), 1);
  }
  return out;
}

/** Retired counts without their last hit: that is wall-clock time, converted at each data plane's own swap. */
function countsOnly(list: RuleCount[]): Array<Omit<RuleCount, 'lastHit'>> {
  return list.map(({ lastHit: _, ...rest }) => rest);
}

/** `next` with where each of its rules stood in `prev`, as the compiling thread hands it over. */
function withPlaces(next: CompiledPolicy, prev: CompiledPolicy): CompiledPolicy {
  return { ...next, ruleFrom: { sections: prev.policy.sections, from: rulePlaces(prev.rules, next.rules) } };
}

t.test('prefault: the counters after a swap are those of a swap without it', async (t) => {
  let ids = 0;
  const r = rng(73);
  const fresh = (): RuleText => ({ id: `r${ids++}`, from: 'any', to: 'any', services: [`tcp/${1000 + ids}`], action: randInt(r, 0, 1) ? 'allow' : 'drop' });
  let sections = [{ name: 'first', rules: Array.from({ length: 12 }, fresh) }, { name: 'second', rules: Array.from({ length: 30 }, fresh) }];
  let runsSeen = 0, sameSeen = 0, retiredSeen = 0;
  for (let round = 0; round < 60; round++) {
    const prev = compile(sections);
    sections = edit(r, sections, fresh);
    const next = withPlaces(compile(sections), prev);
    const ahead = lab(prev), inTurn = lab(prev);
    await ahead.dp.prefault(next);
    const reserve = ahead.dp['reserved'];
    t.ok(reserve !== null && reserve.rules === next.rules, `round ${round}: prefault worked out the swap to this policy`);
    if (reserve?.runs) runsSeen++;
    if (reserve?.same) sameSeen++;
    ahead.dp.setPolicy(next);
    inTurn.dp.setPolicy(next);
    t.same([...ahead.dp.ct.ruleStats], [...inTurn.dp.ct.ruleStats], `round ${round}: the same counters, each with its rule`);
    // And what they should be, worked out here by id: each rule's own row of the old table, or zeros.
    const oldRow = new Map(prev.rules.map((rule, i) => [`${rule.section}\0${rule.id}`, i + 1]));
    const expected = new Float64Array((next.rules.length + 1) * RS_COUNT);
    for (let k = 0; k < RS_COUNT; k++) expected[k] = ahead.before[k];
    next.rules.forEach((rule, i) => {
      const row = oldRow.get(`${rule.section}\0${rule.id}`);
      if (row !== undefined) for (let k = 0; k < RS_COUNT; k++) expected[(i + 1) * RS_COUNT + k] = ahead.before[row * RS_COUNT + k];
    });
    t.same([...ahead.dp.ct.ruleStats], [...expected], `round ${round}: each counter is its rule's from before`);
    t.same(countsOnly(ahead.retired), countsOnly(inTurn.retired), `round ${round}: the same retired counts`);
    t.ok(ahead.retired.every((c, i) => Math.abs((c.lastHit ?? 0) - (inTurn.retired[i].lastHit ?? 0)) <= 2), `round ${round}: and last hits (wall clock, read at each swap)`);
    t.equal(ahead.dp['reserved'], null, `round ${round}: the swap let go of what was made for it`);
    retiredSeen += ahead.retired.length;
    ahead.dp.stop();
    inTurn.dp.stop();
  }
  // The edits exercised each way through the swap.
  t.ok(runsSeen >= 20, `runs were worked out ahead (${runsSeen} rounds)`);
  t.ok(sameSeen >= 3, `every rule stayed in place (${sameSeen} rounds)`);
  t.ok(retiredSeen >= 5, `removed rules retired their counts (${retiredSeen})`);
});

t.test('prefault: 20,000 rules moved by one inserted above them are one run', async (t) => {
  const rules = (n: number, first: number): RuleText[] => Array.from({ length: n }, (_, i) => ({ id: `r${first + i}`, from: 'any', to: 'any', services: [`tcp/${1 + ((first + i) % 60000)}`], action: 'allow' }));
  const prev = compile([{ name: 's', rules: rules(20_000, 1) }]);
  const next = withPlaces(compile([{ name: 's', rules: [...rules(1, 0), ...rules(20_000, 1)] }]), prev);
  const ahead = lab(prev), inTurn = lab(prev);
  t.teardown(() => { ahead.dp.stop(); inTurn.dp.stop(); });
  await ahead.dp.prefault(next);
  t.same([...(ahead.dp['reserved']?.runs ?? [])], [1, 0, 20_000], 'one run: new rules 1.. stood at 0..');
  ahead.dp.setPolicy(next);
  inTurn.dp.setPolicy(next);
  const a = ahead.dp.ct.ruleStats, b = inTurn.dp.ct.ruleStats;
  let differ = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) differ++;
  t.equal(a.length, b.length, 'the same table size');
  t.equal(differ, 0, 'the same counters');
  t.equal(a[2 * RS_COUNT], b[2 * RS_COUNT], 'rule r1 (now second) kept its count');
  t.equal(a[2 * RS_COUNT], 11, "and it is the count it had as the first rule");
});

t.test('prefault made for one policy is not used by a swap to another', async (t) => {
  const rule = (id: string, port: number): RuleText => ({ id, from: 'any', to: 'any', services: [`tcp/${port}`], action: 'allow' });
  const prev = compile([{ name: 's', rules: [rule('a', 1), rule('b', 2), rule('c', 3)] }]);
  const one = withPlaces(compile([{ name: 's', rules: [rule('x', 9), rule('a', 1), rule('b', 2), rule('c', 3)] }]), prev);
  const other = withPlaces(compile([{ name: 's', rules: [rule('c', 3), rule('a', 1)] }]), prev);
  const ahead = lab(prev), inTurn = lab(prev);
  t.teardown(() => { ahead.dp.stop(); inTurn.dp.stop(); });
  await ahead.dp.prefault(one);
  ahead.dp.setPolicy(other);
  inTurn.dp.setPolicy(other);
  t.same([...ahead.dp.ct.ruleStats], [...inTurn.dp.ct.ruleStats], 'the counters of a swap that worked it all out itself');
  t.same(ahead.retired.map((c) => c.id), ['b'], 'b retired');
  t.same(countsOnly(ahead.retired), countsOnly(inTurn.retired), 'with the same counts');
});

t.test('prefault: the last rule removed retires its counts', async (t) => {
  const rule = (id: string, port: number): RuleText => ({ id, from: 'any', to: 'any', services: [`tcp/${port}`], action: 'allow' });
  const prev = compile([{ name: 's', rules: [rule('a', 1), rule('b', 2), rule('c', 3), rule('d', 4)] }]);
  const next = withPlaces(compile([{ name: 's', rules: [rule('x', 9), rule('a', 1), rule('b', 2), rule('c', 3)] }]), prev);
  const ahead = lab(prev);
  t.teardown(() => ahead.dp.stop());
  await ahead.dp.prefault(next);
  t.same([...(ahead.dp['reserved']?.runs ?? [])], [1, 0, 3], 'a, b and c moved down together');
  ahead.dp.setPolicy(next);
  t.same(countsOnly(ahead.retired), [{ section: 's', id: 'd', packets: 41, bytes: 42, connections: 43 }], "d's counts (row 4) retired");
  t.same([...ahead.dp.ct.ruleStats.subarray(RS_COUNT, 5 * RS_COUNT)], [0, 0, 0, 0, 11, 12, 13, 14, 21, 22, 23, 24, 0, 0, 0, 0], 'x starts at 0, a and b keep theirs, c never counted');
});
