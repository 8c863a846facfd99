// Later fragments follow their first: remembered by (family, protocol,
// addresses, identification), forgotten after the reassembly timeout.
import t from 'tap';
import { FragmentTable, fragLookup, fragRemember } from '../src/flow/fragments.js';
import { frameBuild } from '../src/packet/build.js';
import { FRAG, PKT, PKT_WORDS, parseFrame } from '../src/packet/parse.js';
import { Outcome } from '../src/packet/verdict.js';

function parsed(spec: Parameters<typeof frameBuild>[0]): Int32Array {
  const pkt = new Int32Array(PKT_WORDS);
  const f = frameBuild(spec);
  parseFrame(f, 0, f.length, pkt);
  return pkt;
}

t.test('a later fragment finds its first, and only its own', async (t) => {
  const ft = new FragmentTable(64, 30_000);
  const first = parsed({ family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 17, sport: 1, dport: 2, moreFragments: true, ipId: 7 });
  t.equal(first[PKT.fragment], FRAG.first);
  fragRemember(ft, first, Outcome.forward, 3, 1000);
  const later = parsed({ family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 17, fragmentOffset: 185, ipId: 7 });
  t.equal(later[PKT.fragment], FRAG.later);
  t.equal(fragLookup(ft, later, 2000), (Outcome.forward << 16) | 3, 'the same datagram: forward to port 3');
  t.equal(fragLookup(ft, parsed({ family: 4, src: '10.0.0.1', dst: '10.0.0.2', proto: 17, fragmentOffset: 185, ipId: 8 }), 2000), -1, 'another identification');
  t.equal(fragLookup(ft, parsed({ family: 4, src: '10.0.0.9', dst: '10.0.0.2', proto: 17, fragmentOffset: 185, ipId: 7 }), 2000), -1, 'another source');
  t.equal(fragLookup(ft, later, 2000 + 30_001), -1, 'forgotten after the timeout');
  const denied = parsed({ family: 4, src: '10.0.0.5', dst: '10.0.0.2', proto: 17, sport: 1, dport: 2, moreFragments: true, ipId: 9 });
  fragRemember(ft, denied, Outcome.policy, 3, 5000);
  t.equal(fragLookup(ft, parsed({ family: 4, src: '10.0.0.5', dst: '10.0.0.2', proto: 17, fragmentOffset: 100, ipId: 9 }), 5001) >> 16, Outcome.policy, 'a denied first: its fragments are denied too');
});

t.test('a full table overwrites the oldest, never grows', async (t) => {
  const ft = new FragmentTable(16, 30_000);
  for (let i = 0; i < 1000; i++) {
    fragRemember(ft, parsed({ family: 4, src: `10.1.${i >> 8}.${i & 255}`, dst: '10.0.0.2', proto: 17, sport: 1, dport: 2, moreFragments: true, ipId: i }), Outcome.forward, 1, i, 1);
  }
  t.equal(fragLookup(ft, parsed({ family: 4, src: '10.1.0.0', dst: '10.0.0.2', proto: 17, fragmentOffset: 10, ipId: 0 }), 1000), -1, 'the oldest datagram was overwritten: 16 slots hold no more than 16');
  t.equal(fragLookup(ft, parsed({ family: 4, src: '10.1.3.231', dst: '10.0.0.2', proto: 17, fragmentOffset: 10, ipId: 999 }), 1000) & 0xffff, 1, 'the newest is there');
});
