// --forwarding-cpu (src/util/placement.ts): the forwarding thread alone on its
// CPU, every other thread of the process (V8's helpers, libuv's pool, and the
// compiling thread started afterwards, which moves itself) on the rest; read
// back from /proc, in a child process so the test runner's threads stay put.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { native } from '../src/io/native.js';
import { OTHERS_NICE } from '../src/util/placement.js';

const root = fileURLToPath(new URL('..', import.meta.url));

/** Run `body` (an ES module using the built dist/) in a child and return what it printed as JSON. */
function child(body: string): Record<string, unknown> {
  // A file, not --eval: a worker thread the child starts inherits its flags, and --input-type would refuse its file.
  const dir = mkdtempSync(join(tmpdir(), 'tw-placement-'));
  try {
    const file = join(dir, 'child.mjs');
    writeFileSync(file, body.replaceAll("'./dist/", `'${pathToFileURL(root).href}dist/`));
    // Without the test runner's NODE_OPTIONS (its loader runs a thread of its own): a process as the daemon runs.
    const r = spawnSync(process.execPath, [file], { cwd: root, encoding: 'utf8', timeout: 60_000, env: { ...process.env, NODE_OPTIONS: '' } });
    if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  } finally {
    if (!process.env.KEEP) rmSync(dir, { recursive: true, force: true });
  }
}

const THREADS = `
import { readdirSync, readFileSync } from 'node:fs';
const threads = () => readdirSync('/proc/self/task').map((tid) => ({
  tid: Number(tid),
  cpus: /Cpus_allowed_list:\\s*(\\S+)/.exec(readFileSync('/proc/self/task/' + tid + '/status', 'utf8'))[1],
}));
`;

const allowed = native().threadCpus(0);

t.test('auto: the forwarding thread on one CPU, every other thread off it', async (t) => {
  const out = child(`${THREADS}
import { placement, placeNewThreads, placeThreads } from './dist/src/util/placement.js';
import { OffThreadPreparer } from './dist/src/control/offThread.js';
import { Worker } from 'node:worker_threads';
const r = placeThreads('auto');
const placedThreads = threads();
// A worker that moves itself at its first step, as the compiling thread does (given the CPUs in workerData).
const selfPlacing = new Worker(\`
  import { parentPort, workerData } from 'node:worker_threads';
  import { placeSelf, threadId } from './dist/src/util/placement.js';
  placeSelf(workerData.cpus);
  parentPort.postMessage(threadId());
\`, { eval: true, type: 'module', workerData: { cpus: placement()?.others ?? [] } });
const selfTid = await new Promise((ok) => selfPlacing.once('message', ok));
const selfCpus = threads().find((x) => x.tid === selfTid)?.cpus;
await selfPlacing.terminate();
// A thread that does not move itself (as libuv or V8 may make later) is born here and moved by the next sweep.
const beforeLate = threads();
const late = new Worker('setInterval(() => {}, 1000)', { eval: true });
await new Promise((ok) => late.once('online', ok));
const bornOn = threads().filter((x) => !beforeLate.some((y) => y.tid === x.tid));
// The compiling thread, started now, compiles from its own CPUs; then the daemon's sweep.
const p = new OffThreadPreparer();
const prepared = await p.prepare({ id: 1, text: readFileSync('examples/three-tier.yaml', 'utf8'), source: 'three-tier.yaml' }, {}, null);
const swept = placeNewThreads();
console.log(JSON.stringify({ r, main: process.pid, placedThreads, selfTid, selfCpus, bornOn, swept, after: threads(), points: prepared.compiled.points.size }));
await late.terminate();
await p.close();
`);
  if (allowed.length < 2) {
    // A process with one CPU: every thread shares it, and the placement says so.
    t.match(out.r, { placement: null, reason: /one CPU/ });
    return;
  }
  const r = out.r as { placement: { forwarding: number; others: number[]; moved: number }; reason: null };
  t.equal(r.reason, null, 'placed');
  const fwd = r.placement.forwarding;
  t.equal(fwd, allowed[allowed.length - 1], 'auto takes the last CPU the process may use');
  t.same(r.placement.others, allowed.slice(0, -1), 'the others get the rest');
  // The kernel prints a list of CPUs with ranges (0-3,5): compare as numbers.
  const expand = (s: string) => s.split(',').flatMap((part) => { const [a, b] = part.split('-').map(Number); return b === undefined ? [a] : Array.from({ length: b - a + 1 }, (_, i) => a + i); });
  type Thread = { tid: number; cpus: string };
  const onForwarding = (list: Thread[]) => list.filter((x) => x.tid !== out.main && expand(x.cpus).includes(fwd));
  const placedThreads = out.placedThreads as Thread[];
  t.equal(placedThreads.find((x) => x.tid === out.main)?.cpus, String(fwd), 'the forwarding thread runs on its CPU only');
  t.ok(placedThreads.length > 1, 'the process had other threads (V8, libuv)');
  t.same(onForwarding(placedThreads), [], 'every thread there was at the placement is off the forwarding CPU');
  t.same(expand(out.selfCpus as string), r.placement.others, 'a worker given the CPUs moves itself off at its first step');
  const bornOn = out.bornOn as Thread[];
  t.ok(bornOn.length >= 1 && bornOn.every((x) => x.cpus === String(fwd)), 'a thread made later is born on the forwarding CPU');
  t.ok((out.swept as number) >= 1, 'the sweep moves threads made since');
  t.same(onForwarding(out.after as Thread[]), [], 'after the sweep no other thread may run on the forwarding CPU');
  t.equal(out.points, 5, 'the compiling thread compiled from its CPUs');
});

t.test('what cannot be placed says why and moves nothing', async (t) => {
  const notAllowed = Math.max(...allowed) + 1;
  const out = child(`${THREADS}
import { placeThreads } from './dist/src/util/placement.js';
const before = threads();
const none = placeThreads('none');
const missing = placeThreads(${notAllowed});
console.log(JSON.stringify({ none, missing, same: JSON.stringify(before) === JSON.stringify(threads()) }));
`);
  t.match(out.none, { placement: null, reason: /turned off/ });
  t.match(out.missing, { placement: null, reason: new RegExp(`CPU ${notAllowed} is not one this process may use`) });
  t.ok(out.same, 'every thread is where it was');
});

t.test('without a CPU of its own: every other thread at a lower priority, the compiling thread at its own', async (t) => {
  const out = child(`
import { readdirSync, readFileSync } from 'node:fs';
import { getPriority } from 'node:os';
import { Worker } from 'node:worker_threads';
import { othersYielding, yieldOthers } from './dist/src/util/placement.js';
import { OffThreadPreparer } from './dist/src/control/offThread.js';
const nices = () => Object.fromEntries(readdirSync('/proc/self/task').map((tid) => [tid, getPriority(Number(tid))]));
const before = nices();
const lowered = yieldOthers();
const yielded = nices();
// The compiling thread sets its own priority at its first step; a thread made later is lowered by the next sweep.
const p = new OffThreadPreparer();
await p.prepare({ id: 1, text: readFileSync('examples/three-tier.yaml', 'utf8'), source: 'three-tier.yaml' }, {}, null);
const late = new Worker('setInterval(() => {}, 1000)', { eval: true });
await new Promise((ok) => late.once('online', ok));
const beforeSweep = nices();
const swept = yieldOthers();
console.log(JSON.stringify({ main: process.pid, before, lowered, yielded, beforeSweep, swept, after: nices(), state: othersYielding() }));
await late.terminate();
await p.close();
`);
  const main = String(out.main);
  const before = out.before as Record<string, number>, yielded = out.yielded as Record<string, number>, after = out.after as Record<string, number>;
  const others = Object.keys(before).filter((tid) => tid !== main);
  t.ok(others.length >= 1, 'the process had other threads (V8, libuv)');
  t.equal(out.lowered, others.length, 'each of them was lowered');
  t.equal(yielded[main], before[main], 'the forwarding thread keeps its priority');
  const lowered = Math.min(19, before[main] + OTHERS_NICE);
  t.ok(others.every((tid) => yielded[tid] === lowered), `the others run at nice ${lowered}`);
  const fresh = Object.keys(out.beforeSweep as Record<string, number>).filter((tid) => !(tid in yielded));
  const compiling = fresh.filter((tid) => (out.beforeSweep as Record<string, number>)[tid] === before[main] + 5);
  t.equal(compiling.length, 1, 'the compiling thread set its own priority (nice 5)');
  t.ok((out.swept as number) >= 1, 'the sweep lowers threads made since');
  t.equal(after[compiling[0]], before[main] + 5, 'and leaves the compiling thread at its own');
  t.ok(Object.keys(after).filter((tid) => tid !== main && tid !== compiling[0]).every((tid) => after[tid] === lowered), 'after the sweep every other thread runs lower');
  t.same(out.state, { lowered: others.length + (out.swept as number), nice: lowered });
});

t.test('the CLI refuses a CPU that is not a number', async (t) => {
  const r = spawnSync(process.execPath, ['bin/tapwall.js', 'run', '--config', 'examples/three-tier.yaml', '--forwarding-cpu', 'fast'], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  t.equal(r.status, 2);
  t.match(r.stderr, /--forwarding-cpu takes a CPU number \(0-1023\) or auto, not 'fast'/);
});
