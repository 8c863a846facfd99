// Address classes against set membership read directly from the prefixes:
// for every set and address, "the address is in the set" equals "the
// address's class is in the set's ranges"; nested and disjoint sets are one
// range each.
import t from 'tap';
import { parsePrefix, prefixContains, type Prefix } from '../src/policy/addresses.js';
import { classesBuild, classOf4, classOf6 } from '../src/policy/addressClasses.js';
import { keyWrite } from '../src/packet/key.js';
import { pick, randInt, rng } from './rng.js';

const p = (text: string): Prefix => parsePrefix(text)!;

function inRanges(ranges: Int32Array, c: number): boolean {
  for (let j = 0; j < ranges.length; j += 2) if (c >= ranges[j] && c <= ranges[j + 1]) return true;
  return false;
}

const key = new Int32Array(11);
function classOf(built: ReturnType<typeof classesBuild>, a: Prefix): number {
  keyWrite(key, 0, a.family, a.words, a.words, 0, 0, 0);
  return a.family === 4 ? classOf4(built.classes, key[0]) : classOf6(built.classes, key, 0);
}

/** Addresses worth probing: each prefix's first and last address, their neighbours, and random ones. */
function probes(r: () => number, sets: Prefix[][], family: 4 | 6): Prefix[] {
  const out: Prefix[] = [];
  const add = (big: bigint) => {
    const bits = family === 4 ? 32 : 128;
    if (big < 0n || big >= 1n << BigInt(bits)) return;
    const words = family === 4 ? [Number(big), 0, 0, 0] : [0, 1, 2, 3].map((i) => Number((big >> BigInt(96 - 32 * i)) & 0xffffffffn));
    out.push({ family, words: words as Prefix['words'], len: bits, text: '' });
  };
  for (const set of sets) {
    for (const q of set) {
      if (q.family !== family) continue;
      const start = family === 4 ? BigInt(q.words[0]) : q.words.reduce((a, w) => (a << 32n) | BigInt(w), 0n);
      const end = start + (1n << BigInt((family === 4 ? 32 : 128) - q.len)) - 1n;
      for (const x of [start - 1n, start, end, end + 1n]) add(x);
    }
  }
  for (let i = 0; i < 200; i++) add(family === 4 ? BigInt(randInt(r, 0, 0xffffffff)) : (BigInt(randInt(r, 0, 0xffff)) << 112n) | BigInt(randInt(r, 0, 0xffffffff)));
  return out;
}

t.test('a class is in a set\'s ranges exactly when its addresses are in the set', async (t) => {
  let checked = 0, bad = 0;
  for (let seed = 1; seed <= 200; seed++) {
    const r = rng(seed);
    const v4pool = ['0.0.0.0/0', '10.0.0.0/8', '10.1.0.0/16', '10.1.2.0/24', '10.1.2.0/25', '10.1.2.128/25', '10.1.3.0/24', '10.2.0.0/15', '192.168.0.0/16', '255.255.255.255/32', '0.0.0.0/32'];
    const v6pool = ['::/0', 'fd00::/16', 'fd00:1::/32', 'fd00:1:2::/48', 'fd00:2::/31', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128', '::/128', 'fe80::/10'];
    const nSets = randInt(r, 1, 12);
    // Odd seeds: few prefixes; even seeds: many single addresses, which go through the hash.
    const sets: Prefix[][] = Array.from({ length: nSets }, () => Array.from({ length: randInt(r, 0, seed % 2 ? 5 : 40) }, () => {
      const roll = r();
      if (roll < 0.3) return p(pick(r, v4pool));
      if (roll < 0.5) return p(pick(r, v6pool));
      if (roll < 0.8) return p(`10.1.${randInt(r, 0, 3)}.${randInt(r, 0, 255)}/32`);
      return p(`fd00:1::${randInt(r, 0, 0xffff).toString(16)}/128`);
    }));
    for (const family of [4, 6] as const) {
      const built = classesBuild(family, sets);
      t.equal(built.ranges.length, sets.length);
      for (const a of probes(r, sets, family)) {
        const c = classOf(built, a);
        if (c < 0 || c >= built.classes.classes) { bad++; continue; }
        sets.forEach((set, s) => {
          checked++;
          const want = set.some((q) => q.family === family && prefixContains(q, a));
          if (inRanges(built.ranges[s], c) !== want) bad++;
        });
      }
    }
  }
  t.equal(bad, 0, `membership through classes agrees with the prefixes (${checked} checks)`);
  t.ok(checked > 10_000);
});

t.test('nested and disjoint sets are one range each; classes stay few', async (t) => {
  const sets = [
    [p('10.0.0.0/8')],
    [p('10.1.0.0/16')],
    [p('10.1.2.0/24'), p('10.1.4.0/24')],
    [p('10.2.0.0/16')],
    Array.from({ length: 1000 }, (_, i) => p(`10.3.${i >> 8}.${i & 255}/32`)),
  ];
  const built = classesBuild(4, sets);
  built.ranges.forEach((r, i) => t.equal(r.length, 2, `set ${i} is one range`));
  t.equal(built.classes.classes, 6, 'outside, 10/8 only, 10.1/16, its /24s, 10.2/16, the 1,000 addresses');
  // 1,000 neighbouring /32s and the gaps around them: intervals are merged per class.
  t.ok(built.classes.intervals <= 12, `${built.classes.intervals} intervals`);
});

t.test('a million scattered addresses against 100,000: linear, not their product', async (t) => {
  const r = rng(7);
  const big = Array.from({ length: 1_000_000 }, () => ({ family: 4 as const, words: [randInt(r, 0x0a000000, 0x0affffff), 0, 0, 0] as Prefix['words'], len: 32, text: '' }));
  const small = Array.from({ length: 100_000 }, () => ({ family: 4 as const, words: [randInt(r, 0x0b000000, 0x0bffffff), 0, 0, 0] as Prefix['words'], len: 32, text: '' }));
  const built = classesBuild(4, [big, small]);
  t.equal(built.classes.classes, 3, 'outside, the large set, the small set');
  t.same([...built.ranges[0]].length, 2, 'each set one range');
  t.same([...built.ranges[1]].length, 2);
  for (const a of [big[0], big[999_999], small[5]]) {
    const c = classOf(built, a as Prefix);
    t.ok(inRanges(a === small[5] ? built.ranges[1] : built.ranges[0], c), 'a member is found in its set');
  }
  t.notOk(inRanges(built.ranges[0], classOf(built, p('12.0.0.1'))), 'a stranger is in neither');
});

t.test('the direct IPv4 reader and ip-cidr agree on every form they meet', async (t) => {
  const { parsePrefixGeneral, hasHostBits } = await import('../src/policy/addresses.js');
  const r = rng(11);
  const texts = ['0.0.0.0', '255.255.255.255', '0.0.0.0/0', '10.0.0.5/24', '10.1.2.3/32', '192.168.1.255/31', '1.2.3.4/1', '10.0.0.0/8',
    '256.0.0.1', '10.0.0.01', '10.0.0.1/33', '10.0.0.1/', '10.1/8', '1.2.3', '1.2.3.4.5', '01.2.3.4', '10.0.0.1/08', ' 10.0.0.1'];
  for (let i = 0; i < 3000; i++) {
    const o = () => randInt(r, 0, 255);
    texts.push(`${o()}.${o()}.${o()}.${o()}${r() < 0.7 ? `/${randInt(r, 0, 32)}` : ''}`);
  }
  let bad = 0, first = '', hostBits = 0, hostBad = 0, hostFirst = '';
  for (const text of texts) {
    const a = parsePrefix(text), b = text.trim() === text ? parsePrefixGeneral(text) : null;
    if (JSON.stringify(a) !== JSON.stringify(b)) { bad++; first ||= `${text}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`; }
    // Host bits as ip-cidr reads the address before the length.
    if (a !== null && text.includes('/')) {
      const address = parsePrefixGeneral(text.slice(0, text.indexOf('/')));
      const want = address !== null && address.words.some((w, i) => w !== a.words[i]);
      if (want) hostBits++;
      if (hasHostBits(text, a) !== want) { hostBad++; hostFirst ||= text; }
    }
  }
  t.equal(bad, 0, `same prefix or the same refusal for ${texts.length} texts ${first}`);
  t.equal(hostBad, 0, `host bits read the same ${hostFirst}`);
  t.ok(hostBits > 500, `${hostBits} of them with host bits`);
});

t.test('prefix aggregation by intervals equals merging siblings until nothing changes', async (t) => {
  const { prefixAggregate } = await import('../src/policy/addresses.js');
  const { naivePrefixAggregate } = await import('./reference.js');
  let bad = 0, first = '';
  for (let seed = 1; seed <= 300; seed++) {
    const r = rng(1000 + seed);
    const list: Prefix[] = Array.from({ length: randInt(r, 0, 40) }, () => {
      const roll = r();
      if (roll < 0.5) return p(`10.0.${randInt(r, 0, 3)}.${randInt(r, 0, 255)}/${randInt(r, 22, 32)}`);
      if (roll < 0.6) return p(pick(r, ['0.0.0.0/0', '10.0.0.0/8', '255.255.255.255/32', '0.0.0.0/32']));
      if (roll < 0.9) return p(`fd00::${randInt(r, 0, 0x3f).toString(16)}/${randInt(r, 122, 128)}`);
      return p(pick(r, ['::/0', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128', 'fd00::/16']));
    });
    const got = prefixAggregate(list).map((x) => x.text), want = naivePrefixAggregate(list).map((x) => x.text);
    if (JSON.stringify(got) !== JSON.stringify(want)) { bad++; first ||= `${list.map((x) => x.text).join(' ')}: ${got.join(' ')} vs ${want.join(' ')}`; }
  }
  t.equal(bad, 0, `the same prefixes in the same order for 300 lists ${first}`);
});

t.test('single IPv4 addresses are looked up in the hash, wider intervals by search', async (t) => {
  const hosts = Array.from({ length: 100 }, (_, i) => p(`10.0.0.${2 * i + 1}/32`));
  const built = classesBuild(4, [hosts, [p('10.0.0.0/24')]]);
  t.ok(built.classes.hostMask > 0, 'the hash is in use');
  t.ok(built.classes.count < built.classes.intervals, `${built.classes.count} intervals searched of ${built.classes.intervals}`);
  const inHosts = (text: string) => inRanges(built.ranges[0], classOf(built, p(text)));
  const inNet = (text: string) => inRanges(built.ranges[1], classOf(built, p(text)));
  t.ok(inHosts('10.0.0.1') && inHosts('10.0.0.199') && inNet('10.0.0.1'));
  t.ok(!inHosts('10.0.0.2') && inNet('10.0.0.2') && inNet('10.0.0.255'));
  t.ok(!inHosts('10.0.1.1') && !inNet('10.0.1.1') && !inNet('9.255.255.255'));
});
