// Randomised differential test of the whole compiler: random policies (tags,
// nested groups, CIDRs, IPv4 and IPv6, services, appliedTo, disabled rules)
// compiled to tries, against reading the policy top to bottom; and compiled
// incrementally from a differently tagged version, which must agree too.
import t from 'tap';
import { policyFromData } from '../src/policy/load.js';
import type { Policy, Rule, Workload } from '../src/policy/model.js';
import { parsePrefix, type Prefix } from '../src/policy/addresses.js';
import { GroupsView, pointClassify, pointClassifyResolution, policyCompile, type CompiledPolicy } from '../src/policy/compile.js';
import { keyWrite } from '../src/packet/key.js';
import { naivePolicyDecide } from './reference.js';
import { pick, randInt, rng } from './rng.js';
import { DocumentCache, effectivePolicy, prepareNow, type EffectiveMemo } from '../src/control/prepare.js';
import type { TagMap } from '../src/control/store.js';

/**
 * One packet at a workload's vNIC: the rule order `compiled` gives it (its key left in `key` for more lookups)
 * and the one the reference gives, reading `policy` top to bottom with `reference`'s resolved groups.
 */
function verdicts(key: Int32Array, compiled: CompiledPolicy, policy: Policy, reference: CompiledPolicy, w: Workload, src: Prefix, dst: Prefix, proto: number, sport: number, dport: number): { got: number; want: number } {
  keyWrite(key, 0, src.family, src.words, dst.words, proto, sport, dport);
  return {
    got: pointClassify(compiled.points.get(w.nic)!.egress.tables, src.family, key, 0),
    want: naivePolicyDecide(policy, reference, w.name, src, dst, proto, sport, dport).order,
  };
}

const TAGS = ['web', 'app', 'db', 'prod', 'dev', 'quarantine'];
const SERVICES = ['tcp/80', 'tcp/443', 'tcp/1000-2000', 'tcp/0', 'tcp/65535', 'udp/53', 'udp/0-1023', 'icmp/echo-request', 'icmp', 'icmpv6/128', 'icmpv6', 'ip/47', 'tcp', 'sctp/9'];

/**
 * A random policy. `large`: up to 150 workloads in few subnets, many
 * overlapping tag groups and CIDR groups that nest, overlap and touch, so
 * that address classes split, nest and fragment.
 */
function randomPolicy(r: () => number, large = false) {
  const nW = large ? randInt(r, 40, 150) : randInt(r, 1, 8);
  const workloads: Record<string, unknown> = {};
  const ips: string[] = [];
  for (let i = 0; i < nW; i++) {
    const mine: string[] = [];
    if (r() < 0.8) mine.push(`10.${randInt(r, 0, 2)}.${randInt(r, 0, 3)}.${i + 1}`);
    if (r() < 0.6) mine.push(`fd00:${randInt(r, 0, 2)}::${(i + 1).toString(16)}`);
    if (large && i < 100 && r() < 0.3) mine.push(`10.${randInt(r, 0, 2)}.${randInt(r, 0, 3)}.${i + 151}`);
    ips.push(...mine);
    workloads[`w${i}`] = { nic: `tw${i}`, mac: `02:00:00:00:00:${(i + 1).toString(16).padStart(2, '0')}`, ips: mine, tags: TAGS.filter(() => r() < 0.3) };
  }
  const groups: Record<string, unknown> = {};
  const nG = large ? randInt(r, 8, 30) : randInt(r, 1, 6);
  const cidrPool = large
    ? ['10.0.0.0/8', '10.1.0.0/16', '10.0.2.0/24', '10.0.2.0/25', '10.0.2.128/25', '10.0.3.0/24', '10.1.1.0/24', '10.2.0.0/15', '10.0.0.0/23', 'fd00::/16', 'fd00:1::/32', 'fd00:2::/32', 'fd00::/31', '0.0.0.0/0', '::/0', '10.0.1.1/32', '10.0.1.2/31']
    : ['10.0.0.0/8', '10.1.0.0/16', '10.0.2.0/24', 'fd00::/16', 'fd00:1::/32', '0.0.0.0/0', '::/0', '10.0.1.1/32'];
  for (let g = 0; g < nG; g++) {
    const body: Record<string, unknown> = {};
    const kind = randInt(r, 0, 4);
    const someTags = (p: number) => { const l = TAGS.filter(() => r() < p); return l.length > 0 || !large ? l : [pick(r, TAGS)]; };
    if (kind === 0) body.tags = someTags(0.4);
    if (kind === 1) body.tags = { allOf: someTags(0.3) };
    if (kind === 2) body.workloads = Object.keys(workloads).filter(() => r() < 0.4);
    if (kind === 3) body.cidrs = Array.from({ length: large ? randInt(r, 1, 4) : 1 }, () => pick(r, cidrPool));
    if (kind === 4 && g > 0) body.groups = [`g${randInt(r, 0, g - 1)}`];
    else if (kind === 4) body.cidrs = ['192.168.0.0/16'];
    groups[`g${g}`] = body;
  }
  const side = () => (r() < 0.25 ? 'any' : r() < 0.15 ? pick(r, ['10.0.0.0/9', 'fd00::/20', '10.2.3.4']) : Array.from({ length: randInt(r, 1, 2) }, () => `g${randInt(r, 0, nG - 1)}`));
  const rules = Array.from({ length: large ? randInt(r, 20, 80) : randInt(r, 0, 25) }, (_, i) => {
    const rule: Record<string, unknown> = { id: `r${i}`, from: side(), to: side(), action: pick(r, ['allow', 'drop', 'reject']) };
    if (r() < 0.7) rule.services = Array.from({ length: randInt(r, 1, 3) }, () => pick(r, SERVICES));
    // One group, or two that may share members (a vNIC reached by a rule through both; not with the
    // large groups, whose every extra scope is another compile of them).
    if (r() < 0.2) rule.appliedTo = Array.from({ length: large ? 1 : randInt(r, 1, 2) }, () => `g${randInt(r, 0, nG - 1)}`);
    if (r() < 0.1) rule.disabled = true;
    return rule;
  });
  const cut = randInt(r, 0, rules.length);
  const policy = {
    default: pick(r, ['allow', 'drop']),
    workloads,
    groups,
    sections: [{ name: 's1', rules: rules.slice(0, cut) }, { name: 's2', rules: rules.slice(cut) }],
  };
  return { policy, ips };
}

/** The same policy with some workloads' tags changed (what a tag API call does). */
function retagged(policy: Policy, r: () => number): Policy {
  const workloads = new Map([...policy.workloads].map(([n, w]) => [n, r() < 0.5 ? { ...w, tags: TAGS.filter(() => r() < 0.3) } : w]));
  return { ...policy, workloads };
}

function randomAddress(r: () => number, ips: string[], v6: boolean): string {
  const own = ips.filter((a) => a.includes(':') === v6);
  if (own.length > 0 && r() < 0.6) return pick(r, own);
  // Besides arbitrary ones, the first and last addresses of the CIDRs the groups use and their neighbours.
  return v6
    ? pick(r, ['fd00::99', 'fd00:1::5', '2001:db8::1', '::', 'ffff::1', 'fd00:1::', 'fd00:1:ffff:ffff:ffff:ffff:ffff:ffff', 'fd00:2::', 'fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'fd01::'])
    : pick(r, ['10.0.0.1', '10.1.2.3', '10.2.3.4', '192.168.1.1', '0.0.0.0', '255.255.255.255', '10.0.2.200', '10.0.2.127', '10.0.2.128', '10.0.1.3', '10.0.3.255', '10.3.255.255', '10.2.0.0', '9.255.255.255', '11.0.0.0', '10.0.1.2']);
}

function agreeWithReference(t: typeof import('tap').default, large: boolean, seeds: number, packets: number): void {
  let checked = 0, reusedTotal = 0;
  const key = new Int32Array(16);
  for (let seed = 1; seed <= seeds; seed++) {
    const r = rng(large ? 10_000 + seed : seed);
    const { policy: data, ips } = randomPolicy(r, large);
    const { policy, problems } = policyFromData(data as never, `seed-${seed}`);
    if (!policy) {
      t.fail(`seed ${seed}: generated policy is invalid: ${problems.map((p) => p.message).join('; ')}`);
      continue;
    }
    const compiled = policyCompile(policy);
    // The incremental path: compiled from a differently tagged version of it, reusing what still fits.
    const incremental = policyCompile(policy, policyCompile(retagged(policy, r)));
    reusedTotal += incremental.stats.reused;
    let bad = 0, first = '';
    for (let i = 0; i < packets; i++) {
      const v6 = r() < 0.4;
      const src = parsePrefix(randomAddress(r, ips, v6))!, dst = parsePrefix(randomAddress(r, ips, v6))!;
      const proto = pick(r, v6 ? [6, 17, 58, 47, 132] : [6, 17, 1, 47, 132]);
      const ported = proto === 6 || proto === 17 || proto === 132;
      const icmp = proto === 1 || proto === 58;
      const sport = ported ? pick(r, [0, 53, 80, 1500, 65535, randInt(r, 0, 65535)]) : icmp ? pick(r, [0, 8, 128, 3]) : 0;
      const dport = ported ? pick(r, [0, 53, 80, 443, 1000, 2000, 65535, randInt(r, 0, 65535)]) : icmp ? pick(r, [0, 4]) : 0;
      const w = pick(r, [...policy.workloads.values()]);
      const { got, want } = verdicts(key, compiled, policy, compiled, w, src, dst, proto, sport, dport);
      const gotIncremental = pointClassify(incremental.points.get(w.nic)!.egress.tables, src.family, key, 0);
      checked++;
      if (got !== want || gotIncremental !== want) {
        bad++;
        if (!first) first = ` e.g. at ${w.name}: ${proto} ${src.text}:${sport} -> ${dst.text}:${dport}: compiled ${got}, incrementally ${gotIncremental}, reference ${want}`;
      }
    }
    if (bad > 0) t.fail(`seed ${seed}: ${bad} of ${packets} packets disagree${first}`);
  }
  t.equal(checked, seeds * packets, 'every generated policy was valid and every packet was checked');
  // Retagging half of 150 workloads changes every section of the large policies: only the small ones reuse.
  if (!large) t.ok(reusedTotal > 0, `the incremental compiles reused section tables (${reusedTotal}), so that path was exercised`);
}

t.test('compiled tries agree with the policy read top to bottom', async (t) => {
  agreeWithReference(t, false, 150, 200);
});

t.test('with large, nested and overlapping address groups too', async (t) => {
  agreeWithReference(t, true, 6, 300);
});

/** A reload's document: the same data, often with a few things changed (an action, a service, a group, an address). */
function edited(data: ReturnType<typeof randomPolicy>['policy'], r: () => number): unknown {
  const d = JSON.parse(JSON.stringify(data)) as { workloads: Record<string, { ips: string[] }>; groups: Record<string, Record<string, unknown>>; sections: Array<{ rules: Array<Record<string, unknown>> }> };
  const rules = d.sections.flatMap((x) => x.rules);
  if (rules.length > 0 && r() < 0.3) { const rule = pick(r, rules); rule.action = pick(r, ['allow', 'drop', 'reject']); }
  if (rules.length > 0 && r() < 0.3) { const rule = pick(r, rules); rule.services = [pick(r, SERVICES)]; }
  const names = Object.keys(d.groups);
  if (names.length > 0 && r() < 0.3) {
    const g = d.groups[pick(r, names)];
    if (Array.isArray(g.cidrs)) g.cidrs = [pick(r, ['10.0.2.0/24', '10.1.0.0/16', 'fd00:1::/32', '10.0.1.1/32'])];
    else if (Array.isArray(g.tags)) g.tags = TAGS.filter(() => r() < 0.4);
  }
  const withIps = Object.values(d.workloads).filter((w) => w.ips.some((a) => !a.includes(':')));
  if (withIps.length > 0 && r() < 0.2) { const w = pick(r, withIps); w.ips = w.ips.map((a) => (a.includes(':') ? a : `10.3.${randInt(r, 0, 3)}.${randInt(r, 1, 250)}`)); }
  return d;
}

const RELOAD_SEEDS = 60;

t.test('a reload: a new document compiled against the last one\'s result agrees with the reference, reusing what did not change', async (t) => {
  let checked = 0, reusedTotal = 0;
  const key = new Int32Array(16);
  for (let seed = 1; seed <= RELOAD_SEEDS; seed++) {
    const r = rng(50_000 + seed);
    const large = seed % 20 === 0;
    const { policy: data, ips } = randomPolicy(r, large);
    const before = policyFromData(data as never, `seed-${seed}`).policy;
    // Read again from its data: every object new, as a reload's document is.
    const after = policyFromData(edited(data, r) as never, `seed-${seed}-reloaded`).policy;
    if (!before || !after) { t.fail(`seed ${seed}: generated policy is invalid`); continue; }
    const reloaded = policyCompile(after, policyCompile(before));
    const fresh = policyCompile(after);
    reusedTotal += reloaded.stats.reused;
    let bad = 0, first = '';
    for (let i = 0; i < 150; i++) {
      const v6 = r() < 0.4;
      const src = parsePrefix(randomAddress(r, [...ips, '10.3.1.7'], v6))!, dst = parsePrefix(randomAddress(r, ips, v6))!;
      const proto = pick(r, v6 ? [6, 17, 58, 47, 132] : [6, 17, 1, 47, 132]);
      const ported = proto === 6 || proto === 17 || proto === 132;
      const sport = ported ? pick(r, [0, 53, 80, 1500, 65535]) : 0;
      const dport = ported ? pick(r, [0, 53, 80, 443, 1000, 2000, 65535, randInt(r, 0, 65535)]) : proto === 1 || proto === 58 ? pick(r, [0, 4]) : 0;
      const w = pick(r, [...after.workloads.values()]);
      const { got, want } = verdicts(key, reloaded, after, fresh, w, src, dst, proto, sport, dport);
      const resolution = pointClassifyResolution(reloaded.points.get(w.nic)!.egress.tables, src.family, key, 0);
      const wantResolution = pointClassifyResolution(fresh.points.get(w.nic)!.egress.tables, src.family, key, 0);
      checked++;
      if (got !== want || resolution !== wantResolution) {
        bad++;
        if (!first) first = ` e.g. at ${w.name}: ${proto} ${src.text}:${sport} -> ${dst.text}:${dport}: reloaded ${got} (resolution ${resolution}), reference ${want} (fresh resolution ${wantResolution})`;
      }
    }
    if (bad > 0) t.fail(`seed ${seed}: ${bad} of 150 packets disagree${first}`);
  }
  t.equal(checked, RELOAD_SEEDS * 150, 'every generated policy was valid and every packet was checked');
  t.ok(reusedTotal > 0, `the reloads reused section tables of the last document (${reusedTotal}), so that path was exercised`);
});

t.test('tag changes through the patched effective policy and the compiler\'s changed-workloads hint agree too', async (t) => {
  // What the daemon does on a tag call: prepareNow patches the last effective policy (only the retagged
  // workloads get new objects) and tells the compiler which workloads changed, so nothing scans them all.
  const key = new Int32Array(16);
  let checked = 0, hinted = 0;
  for (let seed = 1; seed <= 40; seed++) {
    const r = rng(20_000 + seed);
    const { policy: data, ips } = randomPolicy(r);
    const docs = new DocumentCache();
    const memo: { last: EffectiveMemo | null } = { last: null };
    const ref = { id: 1, text: JSON.stringify(data), source: `seed-${seed}.json` };
    let prepared = prepareNow(docs, null, ref, {}, null, memo);
    const names = [...prepared.document.workloads.keys()];
    let tags: TagMap = {};
    for (let step = 0; step < 6; step++) {
      // Add, change or drop the dynamic tags of one or two workloads; some already expired.
      tags = { ...tags };
      for (let k = 0; k < randInt(r, 1, 2); k++) {
        const w = pick(r, names);
        if (r() < 0.3) delete tags[w];
        else tags[w] = TAGS.filter(() => r() < 0.3).map((tag) => ({ tag, reason: 'test', by: 'test', added: '', expiresAt: r() < 0.2 ? 1 : null }));
      }
      const before = prepared.compiled;
      prepared = prepareNow(docs, before, ref, tags, null, memo);
      if (prepared.compiled.policy !== before.policy) hinted++;
      const eff = effectivePolicy(prepared.document, tags);
      const fresh = policyCompile(eff);
      for (let i = 0; i < 60; i++) {
        const v6 = r() < 0.4;
        const src = parsePrefix(randomAddress(r, ips, v6))!, dst = parsePrefix(randomAddress(r, ips, v6))!;
        const proto = pick(r, v6 ? [6, 17, 58] : [6, 17, 1]);
        const sport = randInt(r, 0, 65535), dport = pick(r, [53, 80, 443, 1500, randInt(r, 0, 65535)]);
        const w = pick(r, [...eff.workloads.values()]);
        const { got, want } = verdicts(key, prepared.compiled, eff, fresh, w, src, dst, proto, sport, dport);
        checked++;
        if (got !== want) {
          t.fail(`seed ${seed} step ${step}: at ${w.name} ${proto} ${src.text}:${sport} -> ${dst.text}:${dport}: incremental ${got}, reference ${want}`);
          return;
        }
      }
    }
  }
  t.equal(checked, 40 * 6 * 60, 'every packet after every tag change was checked');
  t.ok(hinted > 100, `the patched path ran (${hinted} tag changes)`);
});

t.test('a long run of tag changes over many groups: the regrouped view stays what a fresh compile resolves, before and after it is flattened', async (t) => {
  // 120 workloads, a group per workload's dynamic tag, groups of two tags, and groups nesting them: each
  // change regroups a few names, so the view over the first resolution grows past the point where it is
  // made a plain map again (64 names), and goes on from there.
  const N = 120;
  const workloads: Record<string, unknown> = {};
  const groups: Record<string, unknown> = {};
  for (let i = 0; i < N; i++) {
    workloads[`w${i}`] = { nic: `tw${i}`, mac: `02:00:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`, ips: [`10.9.${i >> 8}.${(i & 255) + 1}`], tags: [`home-${i % 7}`] };
    groups[`q${i}`] = { tags: [`q${i}`] };
    groups[`both${i}`] = { tags: { allOf: [`q${i}`, `home-${i % 7}`] } };
  }
  for (let k = 0; k < 12; k++) groups[`nest${k}`] = { groups: Array.from({ length: 10 }, (_, j) => `q${k * 10 + j}`) };
  groups.everything = { groups: Array.from({ length: 12 }, (_, k) => `nest${k}`) };
  const rules = [
    { id: 'from-q', from: 'everything', to: 'any', services: ['tcp/22'], action: 'drop' },
    { id: 'into-both', from: 'any', to: Array.from({ length: 5 }, (_, i) => `both${i * 7}`), services: ['tcp/80'], action: 'allow' },
  ];
  const data = { default: 'allow', workloads, groups, sections: [{ name: 's', rules }] };
  const docs = new DocumentCache();
  const memo: { last: EffectiveMemo | null } = { last: null };
  const ref = { id: 1, text: JSON.stringify(data), source: 'many-groups.json' };
  let prepared = prepareNow(docs, null, ref, {}, null, memo);
  const r = rng(424242);
  let tags: TagMap = {};
  let views = 0, flattened = 0;
  const membersOf = (m: ReadonlyMap<string, { members: Set<string> }>) => [...m].map(([name, g]) => `${name}:${[...g.members].sort().join(',')}`);
  for (let step = 0; step < 150; step++) {
    // Tag a new workload most times, or lift an earlier tag.
    const i = step < N && r() < 0.85 ? step : randInt(r, 0, Math.min(step, N - 1));
    tags = { ...tags };
    if (tags[`w${i}`]) delete tags[`w${i}`];
    else tags[`w${i}`] = [{ tag: `q${i}`, reason: 'test', by: 'test', added: '', expiresAt: null }];
    const before = prepared.compiled.groups;
    prepared = prepareNow(docs, prepared.compiled, ref, tags, null, memo);
    const now = prepared.compiled.groups;
    if (now instanceof GroupsView) views++;
    else if (before instanceof GroupsView) flattened++;
    const fresh = policyCompile(effectivePolicy(prepared.document, tags));
    const got = membersOf(now), want = membersOf(fresh.groups);
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      t.same(got, want, `step ${step}: the groups after tagging w${i}`);
      return;
    }
  }
  t.ok(views > 100, `the regrouped groups were a view over the first resolution (${views} of 150 changes)`);
  t.ok(flattened >= 1, `and were made a plain map again when they grew (${flattened} times)`);
});

/**
 * The policy as a reload edits it, with every rule it keeps the same object
 * (as the forwarding thread holds a rule that only moved: a rule's place is
 * not part of it): per section a rule removed, one replaced by another in
 * its place, two swapped, or a new one put first.
 */
function editedSharingRules(policy: Policy, r: () => number, step: number): Policy {
  const sections = policy.sections.map((s, si) => {
    const rules = s.rules.slice();
    for (let e = randInt(r, 1, 3); e > 0; e--) {
      const kind = randInt(r, 0, 3);
      const i = randInt(r, 0, Math.max(0, rules.length - 1));
      const fresh = (from: Rule): Rule => ({ ...from, id: `${from.id}-${step}-${si}-${e}`, action: pick(r, ['allow', 'drop', 'reject'] as const) });
      if (kind === 0 && rules.length > 0) rules.splice(i, 1);
      else if (kind === 1 && rules.length > 0) rules[i] = fresh(rules[i]);
      else if (kind === 2 && rules.length > 1 && i + 1 < rules.length) [rules[i], rules[i + 1]] = [rules[i + 1], rules[i]];
      else if (rules.length > 0) rules.unshift(fresh(rules[i]));
    }
    return { name: s.name, rules };
  });
  const count = sections.reduce((n, s) => n + s.rules.length, 0);
  return { ...policy, sections, places: { lines: new Int32Array(count).fill(1), columns: new Int32Array(count).fill(1) } };
}

t.test('documents that share rule objects at other places compile each as itself, one after the other', async (t) => {
  const key = new Int32Array(16);
  let checked = 0, shared = 0;
  for (let seed = 1; seed <= 60; seed++) {
    const r = rng(50_000 + seed);
    const { policy: data, ips } = randomPolicy(r);
    let policy = policyFromData(data as never, `seed-${seed}`).policy!;
    let compiled = policyCompile(policy);
    for (let step = 0; step < 4; step++) {
      const next = editedSharingRules(policy, r, step);
      const held = new Set(policy.sections.flatMap((s) => s.rules));
      shared += next.sections.flatMap((s) => s.rules).filter((x) => held.has(x)).length;
      // Compiled from the one before, as a reload is: its caches and section tables are there to be (wrongly) reused.
      compiled = policyCompile(next, compiled);
      policy = next;
      let bad = 0, first = '';
      for (let i = 0; i < 40; i++) {
        const v6 = r() < 0.4;
        const src = parsePrefix(randomAddress(r, ips, v6))!, dst = parsePrefix(randomAddress(r, ips, v6))!;
        const proto = pick(r, [6, 17]);
        const sport = pick(r, [0, 1500, 65535]), dport = pick(r, [53, 80, 443, 1000, 2000, 65535]);
        const w = pick(r, [...policy.workloads.values()]);
        const { got, want } = verdicts(key, compiled, policy, compiled, w, src, dst, proto, sport, dport);
        checked++;
        if (got !== want && !first) first = ` e.g. at ${w.name}: ${proto} ${src.text}:${sport} -> ${dst.text}:${dport}: compiled ${got}, reference ${want}`;
        if (got !== want) bad++;
      }
      if (bad > 0) { t.fail(`seed ${seed} step ${step}: ${bad} of 40 packets disagree${first}`); return; }
    }
  }
  t.equal(checked, 60 * 4 * 40, 'every packet was checked');
  t.ok(shared > 1000, `the edited documents kept ${shared} rules as the same objects`);
});
