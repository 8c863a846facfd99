// One decision path: random frames of every kind (bench/fuzz.ts's generator,
// mutated or not) go through the in-memory data plane and through the
// tracer (frameTrace), each on a fresh switch; both must give the same
// outcome and the same port, every time. Policies with every verdict:
// allow, drop, reject, stateless, an ether/ rule, a quarantine, a default
// of allow and SpoofGuard off.
import t from 'tap';
import { MemLab } from './memlab.js';
import { FUZZ_MACS, framesOfEveryKind, mutateInto } from '../bench/fuzz.js';
import { frameTrace } from '../src/control/trace.js';
import { prng } from '../tools/prng.js';
import { policyCompile } from '../src/policy/compile.js';
import { policyParse } from '../src/policy/load.js';

const policy = (def: string, spoofguard: boolean) => `
default: ${def}
spoofguard: ${spoofguard}
workloads:
  a: { nic: twz-a, mac: "${FUZZ_MACS.a}", ips: [10.90.0.1, "fd90::1"], tags: [web], vlans: [10] }
  b: { nic: twz-b, mac: "${FUZZ_MACS.b}", ips: [10.90.0.2, "fd90::2"], tags: [app], vlans: [10] }
  c: { nic: twz-c, mac: "${FUZZ_MACS.c}", ips: [10.90.0.3, "fd90::3"], tags: [db, quarantine] }
groups:
  web: { tags: [web] }
  app: { tags: [app] }
  db: { tags: [db] }
  quarantined: { tags: [quarantine] }
sections:
  - name: emergency
    rules:
      - { id: q-out, from: quarantined, to: any, action: drop }
      - { id: q-in, from: any, to: quarantined, action: drop }
  - name: app
    rules:
      - { id: svc, from: web, to: app, services: [udp/5353, tcp/80, icmp/echo-request, icmpv6/echo-request], action: allow }
      - { id: rej, from: app, to: web, services: [tcp], action: reject }
      - { id: stateless, from: any, to: app, services: [icmp/echo-reply, icmpv6/143, ip/47], action: allow, stateless: true }
      - { id: lldp, from: any, to: any, services: [ether/lldp], action: allow }
      - { id: out, from: web, to: 203.0.113.0/24, services: [tcp, udp], action: allow }
`;

for (const [def, spoofguard] of [['drop', true], ['allow', true], ['drop', false]] as const) {
  t.test(`default ${def}, spoofguard ${spoofguard}: the tracer and the data plane agree on every frame`, async (t) => {
    const compiled = policyCompile(policyParse(policy(def, spoofguard), '(test)').policy!);
    const seed = def === 'drop' ? (spoofguard ? 11 : 13) : 12;
    const rnd = prng(seed);
    const frames = framesOfEveryKind(seed, 1500);
    const scratch = new Uint8Array(4096);
    let agreed = 0;
    const seen = new Set<string>();
    for (const [n, f] of frames.entries()) {
      // Half as generated, half mutated (cut, corrupted, extended).
      const len = n % 2 === 0 ? f.frame.length : mutateInto(f.frame, scratch, 0, rnd);
      const frame = n % 2 === 0 ? f.frame : scratch.slice(0, len);
      const lab = new MemLab(compiled, { uplink: 'twz-up' });
      const got = lab.send(f.port, frame);
      const traced = frameTrace(lab.compiled, frame, f.port, { ports: lab.specs.map((s) => ({ name: s.name, workload: s.workload })) });
      lab.stop();
      // A reject is answered out of the port it came in by (a reset or an ICMP error), nothing else.
      const sentTo = got.outcome === 'reject' ? got.to.filter((p) => p !== f.port) : got.to;
      // The same ports: one, or for a multicast or broadcast packet every receiver whose policy takes it.
      const same = got.outcome === traced.outcome && [...sentTo].sort().join() === [...traced.ports].sort().join();
      if (!same) {
        t.fail(`frame ${n} (${f.kind}) on ${f.port}, seed ${seed}: data plane ${got.outcome} -> [${got.to}], tracer ${traced.outcome} -> [${traced.ports}]`);
        break;
      }
      agreed++;
      seen.add(got.outcome);
    }
    t.equal(agreed, frames.length, `${agreed} frames: the same outcome and port from both`);
    t.ok(seen.size >= 8, `they ended in ${seen.size} different outcomes (${[...seen].join(', ')})`);
  });
}
