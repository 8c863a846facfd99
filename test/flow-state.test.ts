// Connections outlive the daemon: the flow table lives in a shared file
// mapping (src/flow/flowState.ts), and a new data plane over the same file
// resumes them. "Killed" here means the old data plane is simply abandoned,
// never stopped: what the new one reads is what the mapping held at that
// moment, as after kill -9. Runs on in-memory ports (no root); the daemon
// killed with SIGKILL under a real TCP stream is in test/dataplane-restart.test.ts.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemLab } from './memlab.js';
import { frameBuild } from '../src/packet/build.js';
import { TCP_ACK, TCP_SYN } from '../src/packet/parse.js';
import { flowStateRead } from '../src/flow/flowState.js';
import { CT, ENTRY_WORDS, F } from '../src/flow/flowTable.js';

const vm = (name: string, n: number) => `  ${name}: { nic: twr-${name}, mac: "02:61:00:00:00:0${n}", ips: [10.61.0.${n}], tags: [vm] }`;
const policy = (names: string[], service = 'tcp/80') => `
default: drop
workloads:
${names.map((n) => vm(n, n.charCodeAt(0) - 96)).join('\n')}
groups:
  vms: { tags: [vm] }
sections:
  - name: s
    rules:
      - { id: web, from: vms, to: vms, services: [${service}], action: allow }
`;
const n = (name: string) => name.charCodeAt(0) - 96;
/** A TCP segment of the connection a:40000 -> b:80 (reply: b -> a). */
const seg = (from: string, to: string, flags: number, reply = false) => frameBuild({
  family: 4, proto: 6, srcMac: `02:61:00:00:00:0${n(from)}`, dstMac: `02:61:00:00:00:0${n(to)}`,
  src: `10.61.0.${n(from)}`, dst: `10.61.0.${n(to)}`, sport: reply ? 80 : 40000, dport: reply ? 40000 : 80, flags, payload: new Uint8Array(10),
});

function open(lab: MemLab): void {
  lab.send('twr-a', seg('a', 'b', TCP_SYN));
  lab.send('twr-b', seg('b', 'a', TCP_SYN | TCP_ACK, true));
  lab.send('twr-a', seg('a', 'b', TCP_ACK));
}

const dir = mkdtempSync(join(tmpdir(), 'tw-flowstate-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
const fresh = () => join(dir, `flows-${files++}.table`);

t.test('an established connection carries on in a new process over the same file', async (t) => {
  const path = fresh();
  const before = new MemLab(policy(['a', 'b']), { uplink: null, dataplane: { flowState: path } });
  t.same(before.dp.flowStateProblems, [], 'the file is made and mapped');
  open(before);
  t.equal(before.send('twr-a', seg('a', 'b', TCP_ACK)).outcome, 'forward', 'data flows before');
  // Abandoned, not stopped: the file holds what the mapping held.
  const after = new MemLab(policy(['a', 'b']), { uplink: null, dataplane: { flowState: path } });
  t.same(after.dp.resumeFlows(), { resumed: 1, left: 0, from: process.pid }, 'one connection resumed, from this pid');
  t.same(after.send('twr-a', seg('a', 'b', TCP_ACK)), { outcome: 'forward', to: ['twr-b'] }, 'the next segment goes through');
  t.same(after.send('twr-b', seg('b', 'a', TCP_ACK, true)), { outcome: 'forward', to: ['twr-a'] }, 'and its reply');
  t.same(after.dp.resumeFlows(), { resumed: 0, left: 0, from: null }, 'a second call finds nothing');
  // Without the file the same segment is out of state: this is what a restart did before.
  const forgetful = new MemLab(policy(['a', 'b']), { uplink: null });
  t.equal(forgetful.send('twr-a', seg('a', 'b', TCP_ACK)).outcome, 'invalid_state', 'with no file, a mid-stream segment is dropped');
  before.stop(); after.stop(); forgetful.stop();
});

t.test('resumed connections are decided again by the policy in force', async (t) => {
  const path = fresh();
  const before = new MemLab(policy(['a', 'b']), { uplink: null, dataplane: { flowState: path } });
  open(before);
  // The new process runs a policy that no longer allows tcp/80.
  const after = new MemLab(policy(['a', 'b'], 'tcp/443'), { uplink: null, dataplane: { flowState: path } });
  t.equal(after.dp.resumeFlows().resumed, 1, 'resumed');
  const r = after.send('twr-a', seg('a', 'b', TCP_ACK));
  t.not(r.outcome, 'forward', `but not let through (${r.outcome})`);
  t.notOk(r.to.includes('twr-b'), 'nothing reaches b (a is told with a reset)');
  before.stop(); after.stop();
});

t.test('ports are found again by name, whatever their slots', async (t) => {
  const path = fresh();
  const before = new MemLab(policy(['a', 'b']), { uplink: null, dataplane: { flowState: path } });
  open(before);
  // Another workload first: twr-a and twr-b get other slots than before.
  const after = new MemLab(policy(['c', 'b', 'a']), { uplink: null, dataplane: { flowState: path } });
  t.not(after.indexOf('twr-a'), before.indexOf('twr-a'), 'twr-a moved to another slot');
  t.equal(after.dp.resumeFlows().resumed, 1, 'resumed');
  t.same(after.send('twr-b', seg('b', 'a', TCP_ACK, true)), { outcome: 'forward', to: ['twr-a'] }, 'a reply reaches twr-a at its new slot');
  // A process without vNIC a: the connection has nowhere to go and is left behind.
  const again = new MemLab(policy(['a', 'b']), { uplink: null, dataplane: { flowState: path } });
  t.same(again.dp.resumeFlows(), { resumed: 1, left: 0, from: process.pid }, 'the file follows the newest process');
  const without = new MemLab(policy(['b', 'c']), { uplink: null, dataplane: { flowState: path } });
  t.same(without.dp.resumeFlows(), { resumed: 0, left: 1, from: process.pid }, 'a connection whose vNIC is gone is left behind');
  before.stop(); after.stop(); again.stop(); without.stop();
});

t.test('cut, closed and free entries are not resumed; state and counters are', async (t) => {
  const path = fresh();
  const before = new MemLab(policy(['a', 'b', 'c']), { uplink: null, dataplane: { flowState: path } });
  open(before);
  for (let i = 0; i < 3; i++) before.send('twr-a', seg('a', 'b', TCP_ACK));
  // A second connection, c -> b, then cut by a policy without tcp/80.
  before.send('twr-c', seg('c', 'b', TCP_SYN));
  const file = flowStateRead(readFileSync(path));
  if (typeof file === 'string') throw new Error(file);
  const states = [];
  for (let ent = 0; ent < file.capacity; ent++) if (file.entries[ent * ENTRY_WORDS + F.meta] >= 0) states.push(file.entries[ent * ENTRY_WORDS + F.state] & 0xff);
  t.same(states.sort(), [CT.synSent, CT.established].sort(), 'the file holds what the table holds, as it happens');
  before.apply(policy(['a', 'b', 'c'], 'tcp/443'));
  t.not(before.send('twr-a', seg('a', 'b', TCP_ACK)).outcome, 'forward', 'a -> b is cut by the new policy');
  const after = new MemLab(policy(['a', 'b', 'c']), { uplink: null, dataplane: { flowState: path } });
  t.same(after.dp.resumeFlows(), { resumed: 1, left: 1, from: process.pid }, 'the half-open c -> b comes back, the cut a -> b does not');
  const t2 = after.dp.table, e = t2.entries;
  let ent = -1;
  for (let i = 0; i < t2.capacity; i++) if (e[i * ENTRY_WORDS + F.meta] >= 0) ent = i;
  t.equal(e[ent * ENTRY_WORDS + F.state] & 0xff, CT.synSent, 'its state came with it');
  t.equal(e[ent * ENTRY_WORDS + F.packetsOrig], 1, 'and its packet count');
  t.equal(e[ent * ENTRY_WORDS + F.generation], 0, 'but no verdict: the next packet is decided again');
  before.stop(); after.stop();
});

t.test('a file that is not a flow table of this layout is set aside, never half read', async (t) => {
  const cases: Array<[string, (good: Buffer) => Buffer, RegExp]> = [
    ['garbage', () => Buffer.from('not a table at all, just text'.repeat(10)), /not a tapwall flow state file/],
    ['a header only', (good) => good.subarray(0, 40), /shorter than a header/],
    ['cut short', (good) => good.subarray(0, good.length - 100), /cut short/],
    ['another layout version', (good) => { const b = Buffer.from(good); b.writeInt32LE(99, 4); return b; }, /layout version 99/],
    ['a header that does not add up', (good) => { const b = Buffer.from(good); b.writeInt32LE(-5, 12); return b; }, /does not add up/],
  ];
  const goodPath = fresh();
  const maker = new MemLab(policy(['a', 'b']), { uplink: null, dataplane: { flowState: goodPath } });
  open(maker);
  const good = readFileSync(goodPath);
  for (const [what, mangle, problem] of cases) {
    const path = fresh();
    writeFileSync(path, mangle(good));
    const lab = new MemLab(policy(['a', 'b']), { uplink: null, dataplane: { flowState: path } });
    t.match(lab.dp.flowStateProblems.join('\n'), problem, `${what}: the problem is told`);
    t.same(lab.dp.resumeFlows(), { resumed: 0, left: 0, from: null }, `${what}: nothing resumed`);
    t.equal(flowStateRead(readFileSync(path)).constructor, Object, `${what}: the file is replaced by this process's own`);
    t.equal(lab.send('twr-a', seg('a', 'b', TCP_SYN)).outcome, 'forward', `${what}: forwarding works`);
    lab.stop();
  }
  maker.stop();
});

t.test('no file can be made: the table lives in memory, and forwarding is the same', async (t) => {
  const path = join(dir, 'no-such-folder', 'flows.table');
  const lab = new MemLab(policy(['a', 'b']), { uplink: null, dataplane: { flowState: path } });
  t.match(lab.dp.flowStateProblems.join('\n'), /cannot keep the flow table in it .*will not survive a restart/, 'the problem is told');
  t.equal(lab.dp.flowState, null, 'no file');
  open(lab);
  t.equal(lab.send('twr-a', seg('a', 'b', TCP_ACK)).outcome, 'forward', 'connections are tracked as ever');
  lab.stop();
});

t.test('the file is private to its owner', async (t) => {
  const path = fresh();
  const lab = new MemLab(policy(['a', 'b']), { uplink: null, dataplane: { flowState: path } });
  t.equal(statSync(path).mode & 0o777, 0o600, 'mode 0600: it names every connection');
  lab.stop();
});
