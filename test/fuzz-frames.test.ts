// Frame fuzzing (bench/fuzz.ts): two million generated and mutated frames
// of every kind through the data plane on in-memory ports, under a policy
// that allows one service and cuts everything else off. No exception; on
// every port the outcome counters add up to the frames received; and an
// independent checker finds every forwarded frame part of an allowed
// connection of that service. Fixed seeds, so a failure replays with
// `tapwall bench fuzz --seed S --frames N`; longer runs go there too.
import t from 'tap';
import { fuzzFrames, formatFuzz } from '../bench/fuzz.js';

for (const seed of [1, 2, 3, 4]) {
  t.test(`seed ${seed}: 500,000 frames`, async (t) => {
    const r = fuzzFrames({ frames: 500_000, seed });
    t.comment(formatFuzz(r));
    t.equal(r.frames, 500_000, `seed ${seed}: every frame was fed`);
    t.same(r.problems, [], `seed ${seed}: nothing forwarded that the policy does not allow (replay: tapwall bench fuzz --seed ${seed} --frames 500000)`);
    t.same(r.unbalanced, [], `seed ${seed}: outcomes add up to the frames received on every port`);
    t.ok(r.forwarded > 1000, `seed ${seed}: the allowed service was forwarded too (${r.forwarded} frames), so the forwarding paths were fuzzed`);
    t.ok(r.outcomes.malformed > 0 && r.outcomes.spoof > 0 && r.outcomes.policy > 0, `seed ${seed}: frames ended in many outcomes`);
  });
}
