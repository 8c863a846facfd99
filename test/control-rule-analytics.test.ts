// Rule analytics: per-rule counts and last-hit times survive a policy change
// that removes the rule (kept as retired counts) and a restart (the state
// file), and "unused since" finds exactly the rules with no hit since then.
// The real data plane on in-memory ports; the analytics as the daemon keeps them.
import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemLab } from './memlab.js';
import { frameBuild } from '../src/packet/build.js';
import { TCP_SYN } from '../src/packet/parse.js';
import { RuleAnalytics, sinceOf } from '../src/control/ruleAnalytics.js';
import { RuleListWriter } from '../src/control/views.js';
import { RS, RS_COUNT } from '../src/flow/conntrack.js';

const MAC = { a: '02:71:00:00:00:01', b: '02:71:00:00:00:02' };
const policy = (withSsh: boolean) => `
default: drop
workloads:
  a: { nic: twk-a, mac: "${MAC.a}", ips: [10.71.0.1], tags: [web] }
  b: { nic: twk-b, mac: "${MAC.b}", ips: [10.71.0.2], tags: [app] }
groups:
  web: { tags: [web] }
  app: { tags: [app] }
sections:
  - name: s
    rules:
      - { id: web-to-app, from: web, to: app, services: [tcp/80], action: allow }
${withSsh ? '      - { id: ssh, from: web, to: app, services: [tcp/22], action: allow }\n' : ''}      - { id: never, from: app, to: web, services: [tcp/9999], action: allow }
`;

/** A new TCP connection from a to b on `dport` through the lab: its outcome. */
const synOn = (lab: MemLab) => (sport: number, dport: number) =>
  lab.send('twk-a', frameBuild({ family: 4, proto: 6, srcMac: MAC.a, dstMac: MAC.b, src: '10.71.0.1', dst: '10.71.0.2', sport, dport, flags: TCP_SYN })).outcome;

t.test('counts and last hits across a policy change and a restart', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-ra-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let analytics = new RuleAnalytics(dir);
  const lab = new MemLab(policy(true), { uplink: null, dataplane: { onRulesRetired: (c) => analytics.retired(c) } });
  t.teardown(() => lab.stop());
  analytics.start(lab.dp);
  const syn = synOn(lab);
  const before = Date.now();
  t.same([syn(1, 80), syn(2, 80), syn(3, 22)], ['forward', 'forward', 'forward']);
  let totals = analytics.totals();
  t.same([totals.get('s/web-to-app')?.connections, totals.get('s/ssh')?.connections, totals.get('s/never')?.connections], [2, 1, 0], 'connections per rule');
  const hit = totals.get('s/ssh')!.lastHit!;
  t.ok(hit >= before - 1000 && hit <= Date.now() + 1000, 'a last-hit time on the wall clock');
  t.equal(totals.get('s/never')!.lastHit, null, 'a rule never hit has no last hit');

  // ssh is removed by a new policy: its counts are kept, not lost.
  lab.apply(policy(false));
  totals = analytics.totals();
  t.equal(totals.get('s/ssh')?.connections, 1, 'a removed rule keeps its counts');
  t.equal(totals.get('s/web-to-app')?.connections, 2, 'a kept rule keeps its own');
  t.equal(syn(4, 80), 'forward');

  // A restart: the totals come back from the state file, and the new process counts on top.
  analytics.stop();
  const saved = JSON.parse(readFileSync(join(dir, 'rules.json'), 'utf8')) as Record<string, { connections: number; lastHit: string | null }>;
  t.same([saved['s/web-to-app'].connections, saved['s/ssh'].connections, saved['s/never'].lastHit], [3, 1, null], 'saved to the state folder');
  analytics = new RuleAnalytics(dir);
  const lab2 = new MemLab(policy(false), { uplink: null });
  t.teardown(() => lab2.stop());
  analytics.start(lab2.dp);
  synOn(lab2)(5, 80);
  totals = analytics.totals();
  t.equal(totals.get('s/web-to-app')?.connections, 4, 'after the restart: 3 before, 1 since');
  analytics.stop();
});

t.test('since: durations and times', async (t) => {
  const now = Date.parse('2026-12-02T00:00:00Z');
  t.equal(sinceOf('7d', now), now - 7 * 864e5);
  t.equal(sinceOf('30m', now), now - 30 * 6e4);
  t.equal(sinceOf('2026-11-01T00:00:00Z', now), Date.parse('2026-11-01T00:00:00Z'));
  t.equal(sinceOf('soon', now), null, 'anything else: null (the API answers 400)');
});

/** A policy of `n` rules (web to app on ports 1000 + i), and its ssh rule when asked. */
const manyRules = (n: number, withSsh: boolean) => policy(withSsh).replace('      - { id: never,', `${Array.from({ length: n }, (_, i) => `      - { id: p${i}, from: web, to: app, services: [tcp/${1000 + i}], action: allow }\n`).join('')}      - { id: never,`);

/** A state folder, rule analytics kept there, and a lab for `policyText` whose retired rules reach them; removed after the test. */
function analyticsLab(t: Test, policyText: string) {
  const dir = mkdtempSync(join(tmpdir(), 'tw-ra-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const analytics = new RuleAnalytics(dir);
  const lab = new MemLab(policyText, { uplink: null, dataplane: { onRulesRetired: (c) => analytics.retired(c) } });
  t.teardown(() => lab.stop());
  analytics.start(lab.dp);
  return { dir, analytics, lab, syn: synOn(lab) };
}

t.test('the periodic save writes in slices, between turns of the event loop, what the whole save writes', async (t) => {
  const { dir, analytics, lab, syn } = analyticsLab(t, manyRules(1800, true));
  t.same([syn(1, 22), syn(2, 1000), syn(3, 2799), syn(4, 80)], ['forward', 'forward', 'forward', 'forward']);
  // ssh retires: the file has a rule that is not in force.
  lab.apply(manyRules(1800, false));
  t.same([syn(5, 1000), syn(6, 80)], ['forward', 'forward']);
  const file = join(dir, 'rules.json');
  analytics.save();
  const whole = JSON.parse(readFileSync(file, 'utf8')) as Record<string, { connections: number }>;
  t.equal(Object.keys(whole).length, 1800 + 3, 'every rule in force and the retired one');
  t.same([whole['s/p0'].connections, whole['s/p1799'].connections, whole['s/ssh'].connections, whole['s/web-to-app'].connections], [2, 1, 1, 2], 'counts per rule, the retired one kept');
  // The same in slices, with a task that comes back every turn watching the order.
  rmSync(file);
  const order: string[] = [];
  let ticking = true;
  const tick = () => { if (!ticking) return; order.push('t'); setImmediate(tick); };
  setImmediate(tick);
  const write = (await import('node:fs')).WriteStream.prototype.write;
  (await import('node:fs')).WriteStream.prototype.write = function (this: unknown, ...a: unknown[]) { order.push('w'); return (write as (...x: unknown[]) => boolean).apply(this, a); } as typeof write;
  try {
    await analytics.saveInSlices();
  } finally {
    (await import('node:fs')).WriteStream.prototype.write = write;
    ticking = false;
  }
  // (Last hits are turned to wall-clock time with the clock's offset taken at each save: a millisecond apart at most.)
  const sliced = JSON.parse(readFileSync(file, 'utf8')) as Record<string, { lastHit: string | null }>;
  const withoutLastHit = (o: Record<string, object>) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, { ...v, lastHit: null }]));
  t.same(withoutLastHit(sliced), withoutLastHit(whole), 'the file the slices wrote reads as the whole save');
  t.ok(Object.entries(whole as Record<string, { lastHit: string | null }>).every(([k, v]) => (v.lastHit === null) === (sliced[k].lastHit === null) && (v.lastHit === null || Math.abs(Date.parse(v.lastHit) - Date.parse(sliced[k].lastHit!)) <= 2)), 'and the same last hits');
  t.ok(order.filter((x) => x === 'w').length >= 4, 'written in slices');
  t.notMatch(order.join(''), /ww/, 'never two slices without a turn of the event loop between them');

  // A policy change during a save: the save begins again on the new counts, and counts nothing twice.
  syn(7, 2000);
  const saving = analytics.saveInSlices();
  await new Promise((r) => setImmediate(r));
  lab.apply(manyRules(1790, false)); // p1790..p1799 retire into the kept totals
  await saving;
  const after = JSON.parse(readFileSync(file, 'utf8')) as Record<string, { connections: number }>;
  t.same([after['s/p1799'].connections, after['s/p1000'].connections, after['s/p0'].connections], [1, 1, 2], 'the retired rule counted once, the others as they are');
  t.equal(Object.keys(after).length, 1790 + 3 + 1, 'the rules in force, ssh, and of the ten retired the one that counted (a rule never hit is not kept)');
  analytics.stop();
});

t.test("GET /v1/rules' body, written a slice at a time, is the JSON the whole answer was", async (t) => {
  const { analytics, lab, syn } = analyticsLab(t, manyRules(1200, true));
  t.same([syn(1, 22), syn(2, 1000), syn(3, 2199), syn(4, 80), syn(5, 7)], ['forward', 'forward', 'forward', 'forward', 'policy']);
  const dp = lab.dp;
  // The answer as it was built whole: the counters per rule, the kept totals and last hit added, then filtered.
  const whole = (since: number | null, withAnalytics: boolean) => {
    const s = dp.ct.ruleStats, totals = analytics.totals();
    const rules = dp.compiled.rules.map((r, i) => {
      const v: Record<string, unknown> = { section: r.section, id: r.id, action: r.action, log: r.log, packets: s[(i + 1) * RS_COUNT + RS.packets], bytes: s[(i + 1) * RS_COUNT + RS.bytes], connections: s[(i + 1) * RS_COUNT + RS.connections] };
      if (withAnalytics) {
        const tt = totals.get(`${r.section}/${r.id}`)!;
        v.total = { packets: tt.packets, bytes: tt.bytes, connections: tt.connections };
        v.lastHit = tt.lastHit ? new Date(tt.lastHit).toISOString() : null;
      }
      return v;
    }).filter((v) => since === null || v.lastHit === null || v.lastHit === undefined || Date.parse(v.lastHit as string) < since);
    const body = { rules, default: { action: dp.compiled.defaultAction, packets: s[RS.packets], bytes: s[RS.bytes], connections: s[RS.connections] } };
    return `${JSON.stringify(since === null ? body : { since: new Date(since).toISOString(), ...body }, null, 2)}\n`;
  };
  const sliced = (since: number | null, withAnalytics: boolean) => {
    const w = new RuleListWriter({ rules: dp.compiled.rules, stats: dp.ct.ruleStats, defaultAction: dp.compiled.defaultAction, clockOffset: Date.now() - performance.now(), kept: withAnalytics ? (s, id) => analytics.keptOf(s, id) : null, since });
    const slices: string[] = [];
    for (let x = w.next(); x !== null; x = w.next()) slices.push(x);
    return slices;
  };
  // Last hits are wall-clock times made with the clock's offset at each call: compare them apart.
  const stable = (text: string) => text.replace(/"lastHit": "[^"]+"/g, '"lastHit": "T"');
  const all = sliced(null, true);
  t.ok(all.length >= 3, `in slices (${all.length})`);
  t.equal(stable(all.join('')), stable(whole(null, true)), 'every rule, with its totals: the same text');
  t.same(JSON.parse(all.join('')).rules.map((r: { lastHit: string | null }) => r.lastHit === null), JSON.parse(whole(null, true)).rules.map((r: { lastHit: string | null }) => r.lastHit === null), 'the same rules have a last hit');
  t.equal(sliced(null, false).join(''), whole(null, false), 'without rule analytics: the counters only');
  const soon = Date.now() + 60_000;
  const unused = sliced(soon, true).join('');
  t.equal(stable(unused), stable(whole(soon, true)), 'unused since a time to come: the same text');
  t.equal((JSON.parse(unused) as { rules: unknown[] }).rules.length, 1200 + 3, 'every rule (the four hit were hit before it)');
  const none = sliced(0, true).join('');
  t.same((JSON.parse(none) as { rules: Array<{ id: string }> }).rules.length, 1200 + 3 - 4, 'unused since 1970: the rules never hit, all but the four');
  t.notOk((JSON.parse(none) as { rules: Array<{ id: string }> }).rules.some((r) => ['ssh', 'p0', 'p1199', 'web-to-app'].includes(r.id)), 'none of the four');
  t.equal(stable(none), stable(whole(0, true)), 'and its text');
  analytics.stop();
});
