/**
 * `tapwall bench scale`: the policy sizes a data center has (bench/scalePolicies.ts).
 *
 * For each policy, in one process:
 *   load      the document as JSON text (and, for rules10k, as YAML) parsed and
 *             validated as `tapwall run` does (no shadow analysis);
 *   check     the shadow analysis alone (what `tapwall check` adds);
 *   compile   the whole policy, every vNIC; memory: JS heap plus typed arrays
 *             after a forced GC, less the same before;
 *   lookups   first-match classifications per second on one core, over keys
 *             drawn from the policy's own addresses and services;
 *   tag       a quarantine tag on one workload, compiled incrementally from
 *             the running policy (median of 5);
 *   gaps      the real data plane on in-memory ports with 4 of the workloads
 *             local (`host`), fed one new TCP connection per turn of the event
 *             loop; the longest gap between two forwarded frames with nothing
 *             happening (the baseline), during a full reload of the document
 *             through the controller, and during 11 tag changes through it
 *             (quarantine put on and lifted, 0.1 s apart; each timed from the
 *             call to enforced: median and longest). The controller prepares
 *             in a worker thread and the other threads run at nice 19, as
 *             the daemon's do; it reads the policy from a config file (which
 *             the reload rewrites) and keeps an audit log, the policy history
 *             and rule analytics in a state folder, as the daemon always
 *             does; then again with --forwarding-cpu auto. The
 *             longest turn spent taking one part of a result is reported.
 *             Then, as a daemon with --metrics and --state-dir, Prometheus
 *             scrapes from another process (the per-rule series are most of
 *             the text) and the rule analytics' periodic save: their time and
 *             the longest gap while they run.
 *
 * Targets from the scale issue are printed beside the figures; they are
 * goals, not pass/fail checks (these machines are shared and noisy).
 */
import v8 from 'node:v8';
import { PerformanceObserver } from 'node:perf_hooks';
import { runInNewContext } from 'node:vm';
import { stringify as yamlStringify } from 'yaml';
import { Dataplane } from '../src/datapath/dataplane.js';
import { MemoryPort } from '../src/io/memoryPort.js';
import { Controller } from '../src/control/controller.js';
import { OffThreadPreparer } from '../src/control/offThread.js';
import { FileStore, type TagMap } from '../src/control/store.js';
import { DocumentCache, prepareNow, type EffectiveMemo } from '../src/control/prepare.js';
import { frameBuild } from '../src/packet/build.js';
import { TCP_SYN } from '../src/packet/parse.js';
import { keyWrite } from '../src/packet/key.js';
import { parsePrefix } from '../src/policy/addresses.js';
import { policyCompile, pointClassify, type CompiledPolicy } from '../src/policy/compile.js';
import { policyParse } from '../src/policy/load.js';
import { startingPolicy, type Policy } from '../src/policy/model.js';
import { findShadowedRules } from '../src/policy/shadow.js';
import { prng } from '../tools/prng.js';
import { placeThreads, placementUndo, scavengeAlone, yieldOthers, yieldOthersUndo } from '../src/util/placement.js';
import { native } from '../src/io/native.js';
import { PAGE_BYTES } from '../src/util/sliced.js';
import { execFileSync, spawn } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { closeSync, constants as fsConstants, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { RuleAnalytics } from '../src/control/ruleAnalytics.js';
import { PolicyHistory } from '../src/control/history.js';
import { metricsRegistry, metricsServe } from '../src/metrics/metrics.js';
import { ApiServer } from '../src/control/api.js';
import { machineInfo, machineLine, median, type MachineInfo } from './machine.js';
import { scalePolicy, SCALE_CASES, type ScaleCase } from './scalePolicies.js';

export interface ScaleRow {
  case: ScaleCase;
  rules: number;
  workloads: number;
  groupAddresses: number;
  documentBytes: number;
  /** The first load in the process (a daemon's start: the parser not yet optimised). */
  loadJsonMs: number;
  /** Memory pages the process touched for the first time during that load (minor page faults). */
  loadJsonFreshPages: number;
  loadYamlMs: number | null;
  /** The same document loaded again (a reload in a running daemon): the median of 3. */
  loadJsonWarmMs: number;
  loadYamlWarmMs: number | null;
  /**
   * A daemon's first load (10,000 rules only): in the compiling thread of a freshly started process, as the
   * daemon loads its policy file; median of 3 processes, and the pages that run touched for the first time.
   */
  loadDaemonJsonMs: number | null;
  loadDaemonJsonFreshPages: number | null;
  loadDaemonYamlMs: number | null;
  shadowMs: number;
  shadowFindings: number;
  compileMs: number;
  compiledEntries: number;
  compiledBytes: number;
  memoryMB: number;
  lookupsPerSec: number;
  tagChangeMs: number;
  /** A tag change as one host makes it (its 50 vNICs): the patched effective policy and compile, prepareNow. */
  tagChangeHostMs: number;
  gapBaselineMs: number;
  gapReloadMs: number;
  gapTagMs: number;
  /** Gaps over 2 ms in each phase (idle: 0.6 s; reload: from the call until 0.3 s after it returned; tag changes: from the first call until 0.2 s after the last returned). */
  gapsOver2msBaseline: number;
  /** Idle again, for as long as the reload took (at most IDLE_AS_RELOAD_MAX_MS): its longest gap and gaps over 2 ms. */
  gapIdleAsReloadMs: number;
  gapsOver2msIdleAsReload: number;
  idleAsReloadWindowMs: number;
  gapsOver2msReload: number;
  gapsOver2msTag: number;
  /** A full reload through the controller (worker thread), from the call until it is in force. */
  reloadMs: number;
  /** Memory pages the process (both threads) touched for the first time during that reload (minor page faults). */
  reloadFreshPages: number;
  /** Tag changes through the controller, from the call until enforced (store, audit, worker, swap): median and longest of TAG_CHANGES. */
  tagEnforcedMs: number;
  tagEnforcedMaxMs: number;
  /**
   * The same quarantines through the daemon's API (a Unix socket) from another process, a new connection each as
   * a command-line client makes: from the request's start (the client's clock; both processes read the same
   * one) until the change is in force, median and longest of TAG_CHANGES, and until the client has the answer
   * (median); null in the --forwarding-cpu run.
   */
  tagApiMs: number | null;
  tagApiMaxMs: number | null;
  tagApiAnsweredMs: number | null;
  /** The forwarding thread's longest collector pause in each phase. */
  gcPauseBaselineMs: number;
  gcPauseReloadMs: number;
  gcPauseTagMs: number;
  /** The longest turn the main thread spent taking one part of a result from the compiling thread. */
  longestHandoverMs: number;
  /** SCRAPES scrapes of /metrics from another process, one after the other (median time each, bytes), then the rule analytics' save; the longest gap, gaps over 2 ms and collector pause while they ran. */
  scrapeMs: number;
  scrapeBytes: number;
  analyticsSaveMs: number;
  gapScrapeMs: number;
  gapsOver2msScrape: number;
  gcPauseScrapeMs: number;
  handoverParts: number;
  /** The same stream, reload and tag change with the daemon's --forwarding-cpu auto; null on a machine with one CPU. */
  placed: PlacedGaps | null;
}

/** The forwarding figures of a run with the forwarding thread's CPU kept to itself (util/placement.ts). */
export type PlacedGaps = { forwardingCpu: number } & Pick<ScaleRow, 'gapBaselineMs' | 'gapReloadMs' | 'gapTagMs' | 'gapsOver2msBaseline' | 'gapsOver2msReload' | 'gapsOver2msTag' | 'gcPauseReloadMs' | 'reloadMs' | 'tagEnforcedMs' | 'tagEnforcedMaxMs' | 'gapIdleAsReloadMs' | 'gapsOver2msIdleAsReload'>;

/**
 * What the machine allows, measured in the same run: a loop that does nothing but turn, alone on the
 * forwarding CPU (--forwarding-cpu auto), first with the other CPUs idle, then with a process spinning
 * on them. Its gaps are the floor under any forwarding gap here: no code of tapwall's runs in them.
 */
export interface SchedulingFloor {
  forwardingCpu: number;
  quietLongestMs: number; quietOver2ms: number;
  /** Another process spinning on the other CPUs. */
  busyLongestMs: number; busyOver2ms: number;
  /** Another process on the other CPUs making and dropping objects, as a compile does (nothing shared with this one). */
  allocatingLongestMs: number; allocatingOver2ms: number;
  /**
   * Another process on the other CPUs touching memory for the first time, as a compiling heap grows (64 MB at a
   * time, up to FRESH_NEIGHBOUR_MB, then dropped and again): on a VM whose host backs guest memory lazily, the host's
   * work for those pages can stop this CPU too, though nothing is shared.
   */
  freshLongestMs: number; freshOver2ms: number;
  /**
   * A thread of this process on the other CPUs mapping 64 MB, touching it and giving it back, over and over, as a
   * compiling thread's heap grows and shrinks: every unmap must reach each CPU that runs the process (a TLB
   * shootdown), this one too.
   */
  unmappingLongestMs: number; unmappingOver2ms: number;
  /** The same mapping, touching and unmapping in another process: the control for the above. */
  unmappingApartLongestMs: number; unmappingApartOver2ms: number;
}

export interface ScaleResult { machine: MachineInfo; floor: SchedulingFloor | null; pageTouchUs: number; rows: ScaleRow[] }

/**
 * What touching a page of fresh memory costs here (a minor page fault), in
 * microseconds: 64 MB allocated and written once a page, the median of 3.
 * A first load's heap grows by tens of megabytes; on a VM whose host backs
 * guest memory lazily this is 10-16 us a page (seen here), where a host's own
 * kernel takes well under 1.
 */
export function pageTouchCost(): number {
  const bytes = 64 << 20;
  return median([0, 1, 2].map(() => {
    const b = new Uint8Array(bytes);
    const t = performance.now();
    for (let i = 0; i < bytes; i += PAGE_BYTES) b[i] = 1;
    return ((performance.now() - t) * 1000) / (bytes / PAGE_BYTES);
  }));
}

// A forced collection before each memory reading, without asking for --expose-gc on the command line.
v8.setFlagsFromString('--expose-gc');
const forceGc = runInNewContext('gc') as () => void;
function gc(): void {
  forceGc();
}

function memoryNow(): number {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

function time<T>(fn: () => T): [T, number] {
  const t0 = performance.now();
  const out = fn();
  return [out, performance.now() - t0];
}

/**
 * Median time of 20 tag changes (quarantine on, off) as a host with 50 of
 * the workloads prepares them: prepareNow, which patches the last effective
 * policy and compiles this host's points incrementally.
 */
function hostTagChanges(doc: Record<string, unknown>, victim: string): number {
  const hosted = JSON.parse(JSON.stringify(doc)) as { workloads: Record<string, { host?: string }> };
  let i = 0;
  for (const w of Object.values(hosted.workloads)) w.host = i++ < 50 ? 'h1' : 'h2';
  const docs = new DocumentCache();
  const memo: { last: EffectiveMemo | null } = { last: null };
  const ref = { id: 1, text: JSON.stringify(hosted), source: 'scale.json' };
  let prepared = prepareNow(docs, null, ref, {}, 'h1', memo);
  const ms: number[] = [];
  for (let k = 0; k < 20; k++) {
    const tags: TagMap = k % 2 === 0 ? { [victim]: [{ tag: 'quarantine', reason: 'bench', by: 'bench', added: '', expiresAt: null }] } : {};
    prepared = prepareNow(docs, prepared.compiled, ref, tags, 'h1', memo);
    ms.push(prepared.compileMs);
  }
  return median(ms);
}

/** The same document with one workload quarantined (what a tag call makes the compiler see). */
function quarantined(policy: Policy, name: string): Policy {
  const workloads = new Map(policy.workloads);
  const w = workloads.get(name)!;
  workloads.set(name, { ...w, tags: [...w.tags, 'quarantine'] });
  return { ...policy, workloads };
}

/** Keys from the policy's own addresses: workload to workload, and group addresses where there are any. */
function lookupKeys(doc: Record<string, unknown>, count: number): Int32Array {
  const r = prng(5);
  const ips: string[] = Object.values(doc.workloads as Record<string, { ips: string[] }>).map((w) => w.ips[0]);
  const groups = doc.groups as Record<string, { cidrs?: string[] }>;
  const extra: string[] = [];
  for (const g of Object.values(groups)) if (g.cidrs) for (let i = 0; i < 1000 && i < g.cidrs.length; i++) extra.push(g.cidrs[Math.floor(r() * g.cidrs.length)].replace(/\/\d+$/, ''));
  const pool = [...ips, ...extra];
  const ports = [443, 8080, 5432, 53, 22, 6000 + Math.floor(r() * 20000)];
  const keys = new Int32Array(count * 5);
  for (let i = 0; i < count; i++) {
    const a = parsePrefix(pool[Math.floor(r() * pool.length)])!, b = parsePrefix(pool[Math.floor(r() * pool.length)])!;
    keyWrite(keys, i * 5, 4, a.words, b.words, 6, 40000 + (i & 1023), ports[i % ports.length]);
  }
  return keys;
}

function lookupsPerSec(compiled: CompiledPolicy, keys: Int32Array): number {
  const tables = [...compiled.points.values()][0].egress.tables;
  const n = keys.length / 5, total = 2_000_000;
  let best = 0, sink = 0;
  for (let round = 0; round < 3; round++) {
    const t0 = performance.now();
    for (let i = 0; i < total; i++) sink += pointClassify(tables, 4, keys, (i % n) * 5);
    best = Math.max(best, total / ((performance.now() - t0) / 1000));
  }
  if (sink === 0.5) console.log(sink); // keep the loop's result alive
  return best;
}

/** A phase of the gap measurement: its longest gap between two forwarded frames, how many gaps were over 2 ms, the longest collector pause of the forwarding thread. */
export interface Phase { longest: number; over2ms: number; longestGcMs: number }

/** Phases of the stream: frames forwarded in phase 0 are not counted. */
const PHASE_NONE = 0, PHASE_IDLE = 1, PHASE_RELOAD = 2, PHASE_TAG = 3, PHASE_SCRAPE = 4, PHASE_IDLE_AS_RELOAD = 5;

/** The idle window as long as the reload is at most this long (ms). */
const IDLE_AS_RELOAD_MAX_MS = 15_000;

interface Stream {
  frames: number;
  /** Count the gaps that end from now on in phase `p`. */
  phase(p: number): void;
  stop(): void;
  longest(p: number): number;
  over2ms(p: number): number;
  /** The gaps over 2 ms, [start, end] (for looking into them). */
  longGaps: Array<[number, number]>;
}

/**
 * One new connection per turn of the event loop from `from` to `to`; each
 * gap between two forwarded frames is counted in the phase it ends in, as it
 * happens (a stream of tens of seconds is millions of frames). Each turn is
 * a readable event, as a busy vNIC gives the daemon: the addon's watch (the
 * one NativePort uses) on a FIFO in `dir` that always holds a byte, so the
 * loop allocates what the daemon's does per event (56 bytes here: the
 * addon's callback into JavaScript) and no more. setImmediate, which drove
 * it before, allocated 346 bytes a turn, and the forwarding thread collected
 * its young generation more often for it (a rules10k run: 49-54 scavenges,
 * now 31). Frames are built up front, the counts kept in a typed array, the
 * sink only counts.
 */
function streamStart(dp: Dataplane, ports: Map<string, MemoryPort>, from: { nic: string; mac: string; ip: string }, to: { nic: string; mac: string; ip: string }, dir: string): Stream {
  const src = dp.ports.findIndex((p) => p.spec.name === from.nic);
  const source = ports.get(from.nic)!;
  const sink = ports.get(to.nic)!;
  const frames: Uint8Array[] = [];
  for (let sport = 1024; sport < 1024 + 4096; sport++) frames.push(frameBuild({ family: 4, proto: 6, src: from.ip, dst: to.ip, sport, dport: 8080, flags: TCP_SYN, srcMac: from.mac, dstMac: to.mac }));
  // Per phase: longest gap, gaps over 2 ms.
  const stats = new Float64Array(6 * 2);
  const longGaps: Array<[number, number]> = [];
  let count = 0, running = true, k = 0, current = PHASE_NONE, last = -1;
  const fifo = join(dir, 'stream.fifo');
  execFileSync('mkfifo', ['-m', '600', fifo]);
  // Read and write, so opening does not wait for a writer; the byte is never read, so it is always readable.
  const fd = openSync(fifo, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
  writeSync(fd, Buffer.from([1]));
  const turn = () => {
    if (!running) return;
    const before = sink.sentCount;
    source.pushFrame(frames[k++ & 4095]);
    dp.pump(src);
    if (sink.sentCount !== before) {
      const now = performance.now();
      if (last >= 0 && current !== PHASE_NONE) {
        const gap = now - last;
        if (gap > stats[current * 2]) stats[current * 2] = gap;
        if (gap > 2) { stats[current * 2 + 1]++; longGaps.push([last, now]); }
      }
      last = now;
      count++;
    }
  };
  const watch = native().watch(fd, turn);
  const stop = () => {
    if (!running) return;
    running = false;
    native().unwatch(watch);
    closeSync(fd);
  };
  return {
    get frames() { return count; },
    phase(p: number) { current = p; },
    stop,
    longest(p: number) { return stats[p * 2]; },
    over2ms(p: number) { return stats[p * 2 + 1]; },
    longGaps,
  };
}

/** Text as the API hands it over: decoded from the request's bytes in one piece. */
function bodyText(text: string): string {
  return Buffer.from(text, 'utf8').toString('utf8');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Tag changes timed in a run (odd: the median is one of them). */
const TAG_CHANGES = 11;
/** Scrapes of /metrics in a run (odd). */
const SCRAPES = 3;

/** Fresh processes per format in which a daemon's first load is measured (odd: the median is one of them). */
const DAEMON_FIRST_LOADS = 3;

/**
 * A daemon's first load of `text`, where a daemon makes it: in the compiling thread of a process that has just
 * started (its V8 flags as the daemon sets them, the thread with its own heap limits), measured by that thread
 * around loading and validating the document. In `DAEMON_FIRST_LOADS` fresh processes, one after the other;
 * the median time and the pages of that run. The preparation that follows compiles for a host with no
 * workloads (the compile is measured elsewhere).
 */
function daemonFirstLoad(text: string, source: string): { ms: number; freshPages: number } {
  const dir = mkdtempSync(join(tmpdir(), 'tw-first-load-'));
  try {
    const file = join(dir, source);
    writeFileSync(file, text);
    // A CommonJS script importing the modules: a worker inherits the process's flags, and --input-type would
    // stop it from starting from its file.
    const script = [
      '(async () => {',
      `const { OffThreadPreparer } = await import(${JSON.stringify(new URL('../src/control/offThread.js', import.meta.url).href)});`,
      `const { scavengeAlone } = await import(${JSON.stringify(new URL('../src/util/placement.js', import.meta.url).href)});`,
      'scavengeAlone();',
      'const preparer = new OffThreadPreparer();',
      `const prepared = await preparer.prepare({ id: 1, text: require('node:fs').readFileSync(${JSON.stringify(file)}, 'utf8'), source: ${JSON.stringify(source)} }, {}, 'no-such-host');`,
      'process.stdout.write(JSON.stringify(prepared.load));',
      'await preparer.close();',
      '})();',
    ].join('\n');
    const runs: Array<{ ms: number; freshPages: number }> = [];
    for (let i = 0; i < DAEMON_FIRST_LOADS; i++) {
      const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
      const load = JSON.parse(out) as { ms: number; freshPages: number } | null;
      if (load === null) throw new Error('bench scale: the compiling thread did not load the document');
      runs.push(load);
    }
    runs.sort((a, b) => a.ms - b.ms);
    return runs[runs.length >> 1];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A process of its own running `work` (a script whose `go()` writes its result as JSON and exits), started and
 * ready before the measured phase begins, so that starting a process (a fork of this large one) is not counted
 * as the daemon's; `go()` tells it to go and gives the JSON it wrote. `nice`: its priority.
 */
async function helperStart(what: string, work: string, nice: number): Promise<{ go(): Promise<unknown> }> {
  const script = `process.stdout.write('ready\\n'); process.stdin.once('data', () => go());\n${work}`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  if (nice !== 0) try { setPriority(child.pid!, nice); } catch { /* it runs at the default priority */ }
  let out = '';
  const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
  await new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.stdout.on('data', (c: Buffer) => { out += c.toString(); if (out.startsWith('ready\n')) resolve(); });
    void closed.then((code) => reject(new Error(`bench scale: the ${what} left before it was ready (exit ${code})`)));
  });
  return {
    async go() {
      out = '';
      child.stdin.write('go\n');
      const code = await closed;
      try {
        if (code !== 0) throw new Error(`exit ${code}`);
        return JSON.parse(out) as unknown;
      } catch (e) {
        throw new Error(`bench scale: the ${what} failed: ${(e as Error).message}, ${out.slice(0, 200)}`);
      }
    },
  };
}

/**
 * A process of its own that scrapes /metrics `count` times, one after the other, when told to go (as
 * Prometheus does: reading the text is not the daemon's work); `go()` gives each scrape's time and the
 * bytes of the last.
 */
async function scraperStart(port: number, count: number): Promise<{ go(): Promise<{ ms: number[]; bytes: number }> }> {
  const helper = await helperStart('scraper', `
    const http = require('node:http');
    const get = () => new Promise((resolve, reject) => http.get('http://127.0.0.1:${port}/metrics', (res) => {
      let bytes = 0; res.on('data', (c) => { bytes += c.length; }); res.on('end', () => resolve(res.statusCode === 200 ? bytes : -res.statusCode)); res.on('error', reject);
    }).on('error', reject));
    const go = async () => { const ms = []; let bytes = 0; for (let i = 0; i < ${count}; i++) { const t = performance.now(); bytes = await get(); ms.push(performance.now() - t); } process.stdout.write(JSON.stringify({ ms, bytes })); process.exit(0); };`,
  // At the lowest priority: a Prometheus usually reads from another machine; here, on the same two CPUs, its
  // reading of megabytes would otherwise take turns with the forwarding thread (counted as the daemon's gaps).
  19);
  return {
    async go() {
      const r = await helper.go() as { ms: number[]; bytes: number };
      if (!(r.bytes > 0)) throw new Error(`bench scale: the scrapes failed: the last answered ${r.bytes}`);
      return r;
    },
  };
}

/**
 * A client in another process that puts a quarantine on `workload` and lifts it again (or, `liftFirst`, lifts it
 * and puts it on again), `count` changes a tenth of a second apart, through the API's Unix socket at `socket` (a new connection each, as a command-line client
 * makes): when each request started and when its answer was in (timeOrigin + now, a clock every process of
 * the machine reads alike). At the default priority, as a caller would run.
 */
async function taggerStart(socket: string, workload: string, count: number, liftFirst: boolean): Promise<{ go(): Promise<{ calls: Array<[number, number]> }> }> {
  const helper = await helperStart('API client', `
    const http = require('node:http');
    const post = (body) => new Promise((resolve, reject) => {
      const req = http.request({ socketPath: ${JSON.stringify(socket)}, method: 'POST', path: '/v1/workloads/' + ${JSON.stringify(encodeURIComponent(workload))} + '/tags', agent: false, headers: { 'content-type': 'application/json' } }, (res) => {
        let text = ''; res.on('data', (c) => { text += c; }); res.on('end', () => resolve(res.statusCode === 200 ? null : res.statusCode + ' ' + text.slice(0, 200))); res.on('error', reject);
      });
      req.on('error', reject);
      req.end(JSON.stringify(body));
    });
    const now = () => performance.timeOrigin + performance.now();
    const go = async () => {
      const calls = [];
      for (let k = 0; k < ${count}; k++) {
        const t = now();
        const failed = await post((k + ${liftFirst ? 1 : 0}) % 2 === 0 ? { add: ['quarantine'], reason: 'bench', by: 'bench' } : { remove: ['quarantine'], reason: 'bench', by: 'bench' });
        calls.push([t, now()]);
        if (failed !== null) { process.stdout.write(JSON.stringify({ failed })); process.exit(1); }
        await new Promise((r) => setTimeout(r, 100));
      }
      process.stdout.write(JSON.stringify({ calls }));
      process.exit(0);
    };`, 0);
  return {
    async go() {
      const r = await helper.go() as { calls?: Array<[number, number]> };
      if (!r.calls || r.calls.length !== count) throw new Error(`bench scale: ${count} tag changes through the API, ${r.calls?.length ?? 0} answered`);
      return { calls: r.calls };
    },
  };
}

/** The longest gap between turns of an empty loop over `ms`, and how many were over 2 ms. */
async function emptyLoopGaps(ms: number): Promise<{ longest: number; over2ms: number }> {
  let last = performance.now(), longest = 0, over2ms = 0;
  const end = last + ms;
  await new Promise<void>((done) => {
    const turn = () => {
      const now = performance.now();
      if (now - last > longest) longest = now - last;
      if (now - last > 2) over2ms++;
      last = now;
      if (now < end) setImmediate(turn); else done();
    };
    setImmediate(turn);
  });
  return { longest, over2ms };
}

/** The fresh-memory neighbour's ceiling (MB): about what a 100,000-rule reload adds to the compiling thread's heap. */
const FRESH_NEIGHBOUR_MB = 640;
/** A neighbour's script text: 64 MB mapped and written once a page (present), as `b`. */
const TOUCHED_64MB = `const b = new Uint8Array(64 << 20); for (let i = 0; i < b.length; i += ${PAGE_BYTES}) b[i] = 1;`;
/** A neighbour's script text: 64 MB mapped, touched, dropped and collected at once (unmapped). */
const UNMAPPED_64MB = `{ ${TOUCHED_64MB} } collect();`;
const COLLECT = "const collect = require('node:vm').runInNewContext('gc');";
const FRESH_NEIGHBOUR = `const end = Date.now() + 4000; let held = [];
while (Date.now() < end) { ${TOUCHED_64MB} held.push(b); if (held.length * 64 >= ${FRESH_NEIGHBOUR_MB}) held = []; }`;
/** A worker thread's script: say its thread id, then map, touch and unmap 64 MB over and over until told to stop. */
const UNMAPPING_THREAD = `const { parentPort } = require('node:worker_threads'); const { readlinkSync } = require('node:fs');
${COLLECT} let stop = false; parentPort.on('message', () => { stop = true; });
parentPort.postMessage(Number(readlinkSync('/proc/thread-self').split('/').pop()));
const step = () => { if (stop) { parentPort.close(); return; } ${UNMAPPED_64MB} setImmediate(step); };
step();`;
const UNMAPPING_PROCESS = `${COLLECT} const end = Date.now() + 4000;
while (Date.now() < end) { ${UNMAPPED_64MB} }`;

const ALLOCATING_NEIGHBOUR = `const keep = []; const end = Date.now() + 4000;
while (Date.now() < end) { const list = []; for (let i = 0; i < 200000; i++) list.push({ a: i, b: [i] }); keep.push(list); if (keep.length > 8) keep.shift(); }`;

/** The scheduling floor (SchedulingFloor); null where the process has one CPU. */
export async function schedulingFloor(): Promise<SchedulingFloor | null> {
  const placed = placeThreads('auto').placement;
  if (placed === null) return null;
  try {
    const quiet = await emptyLoopGaps(3000);
    // A process that only spins, kept on the other CPUs: no memory, no I/O, nothing shared with this one.
    const busy = await gapsBeside('const end = Date.now() + 4000; while (Date.now() < end);', placed.others);
    // A process making 200,000 small objects at a time and keeping the last eight lists (tens of megabytes live,
    // collected over and over), as a compiling thread does.
    const allocating = await gapsBeside(ALLOCATING_NEIGHBOUR, placed.others);
    const fresh = await gapsBeside(FRESH_NEIGHBOUR, placed.others);
    const unmapping = await gapsBesideThread(UNMAPPING_THREAD, placed.others);
    const unmappingApart = await gapsBeside(UNMAPPING_PROCESS, placed.others, ['--expose-gc']);
    return {
      forwardingCpu: placed.forwarding, quietLongestMs: quiet.longest, quietOver2ms: quiet.over2ms, busyLongestMs: busy.longest, busyOver2ms: busy.over2ms,
      allocatingLongestMs: allocating.longest, allocatingOver2ms: allocating.over2ms, freshLongestMs: fresh.longest, freshOver2ms: fresh.over2ms,
      unmappingLongestMs: unmapping.longest, unmappingOver2ms: unmapping.over2ms, unmappingApartLongestMs: unmappingApart.longest, unmappingApartOver2ms: unmappingApart.over2ms,
    };
  } finally {
    placementUndo();
  }
}

/** An empty loop's gaps over 3 s while another Node.js process runs `script` on `cpus`. */
async function gapsBeside(script: string, cpus: number[], flags: string[] = []): Promise<{ longest: number; over2ms: number }> {
  const neighbour = spawn(process.execPath, [...flags, '-e', script], { stdio: 'ignore' });
  try {
    native().threadCpusSet(neighbour.pid!, cpus);
    return await emptyLoopGaps(3000);
  } finally {
    neighbour.kill();
  }
}

/** An empty loop's gaps over 3 s while a worker thread of this process runs `script` on `cpus` (it posts its thread id first, and ends on any message). */
async function gapsBesideThread(script: string, cpus: number[]): Promise<{ longest: number; over2ms: number }> {
  const neighbour = new Worker(script, { eval: true });
  const ended = new Promise((done) => neighbour.once('exit', done));
  try {
    const tid = await new Promise<number>((resolve, reject) => { neighbour.once('message', resolve); neighbour.once('error', reject); });
    native().threadCpusSet(tid, cpus);
    return await emptyLoopGaps(3000);
  } finally {
    neighbour.postMessage('stop');
    await ended;
  }
}

/**
 * What a gap run needs of a policy, as text: the document with a few workloads on this host (`text`), the same
 * with a rule inserted at the top (`changed`, the full reload), the stream's two ends and the host's workloads. Built
 * apart so that the run's heap holds no document object: a daemon only ever sees a policy's text, and at
 * groups1m the object is 3 million strings and arrays that every full collection would mark.
 */
export interface GapSetup { text: string; changed: string; ends: Array<{ nic: string; mac: string; ip: string }>; local: string[] }

export function gapSetup(doc: Record<string, unknown>, pair: [string, string]): GapSetup {
  const workloads = doc.workloads as Record<string, Record<string, unknown>>;
  const local = [...new Set([...pair, ...Object.keys(workloads).slice(0, 4)])];
  const hosted = { ...doc, workloads: Object.fromEntries(Object.entries(workloads).map(([n, w]) => [n, local.includes(n) ? { ...w, host: 'h1' } : w])) };
  // Read back from bytes as the API reads a request body: JSON.stringify's result is a tree of pieces that
  // the first slice of it flattens (9 ms at 2 MB here), which a request body never is.
  const text = bodyText(JSON.stringify(hosted));
  // The reload inserts a rule at the top (one no frame of the stream meets): every rule after it moves, so
  // every section table is compiled again. A reload that moves nothing keeps the tables of what it did not
  // change and costs far less (README, "Policy at data-center sizes").
  const inserted = { id: 'reload-inserted', from: '192.0.2.1/32', to: 'any', action: 'drop' };
  const changed = bodyText(JSON.stringify({ ...hosted, sections: (doc.sections as Array<{ rules: unknown[] }>).map((s, i) => (i === 0 ? { ...s, rules: [inserted, ...s.rules] } : s)) }));
  const ends = pair.map((n) => ({ nic: workloads[n].nic as string, mac: workloads[n].mac as string, ip: (workloads[n].ips as string[])[0] }));
  return { text, changed, ends, local };
}

/** The longest forwarding gaps: idle, during a full reload, during a tag change. */
export async function gaps(setup: GapSetup, place = false): Promise<{ baseline: Phase; reload: Phase; idleAsReload: Phase; tag: Phase; scrape: (Phase & { ms: number; bytes: number; saveMs: number }) | null; reloadMs: number; tagMs: number; tagMaxMs: number; tagApi: { inForce: number[]; answered: number[] } | null; longestPartMs: number; parts: number; longGaps: Array<[number, number]>; forwardingCpu: number | null; reloadFreshPages: number }> {
  const { text, changed, ends, local } = setup;

  // As the daemon places its threads with --forwarding-cpu auto (before its compiling thread starts).
  const placed = place ? placeThreads('auto').placement : null;
  // Without a CPU of its own, the daemon lowers its other threads' priority instead (util/placement.ts).
  if (!place) yieldOthers();
  const sweep = place ? null : setInterval(yieldOthers, 5000);
  const ports = new Map<string, MemoryPort>();
  // As the daemon keeps its state (--state-dir, always set): the audit log, the policy history, rule analytics.
  const stateDir = mkdtempSync(join(tmpdir(), 'tw-scale-'));
  const analytics = new RuleAnalytics(stateDir);
  // As the daemon reads its policy: a config file, watched, which a change through the API rewrites.
  writeFileSync(join(stateDir, 'policy.json'), text);
  const store = new FileStore(join(stateDir, 'policy.json'), join(stateDir, 'tags.json'));
  // As the daemon builds it: a data plane with no vNICs, whose ports the controller's first apply opens.
  const dp = new Dataplane(policyCompile(startingPolicy()), [], {
    flowCapacity: 1 << 16,
    portOpener: (s) => { const p = new MemoryPort(s.name, false); ports.set(s.name, p); return p; },
    onRulesRetired: (counts) => analytics.retired(counts),
  });
  analytics.start(dp);
  // As the daemon runs it: validation and compilation in a worker thread.
  const preparer = new OffThreadPreparer();
  // When each change was put in force, on the clock both this process and the API's client read (timeOrigin + now).
  const appliedAt: number[] = [];
  const controller = new Controller(store, dp, { host: 'h1', preparer, auditPath: join(stateDir, 'audit.jsonl'), history: new PolicyHistory(stateDir), onApplied: () => { appliedAt.push(performance.timeOrigin + performance.now()); } });
  await controller.start();
  // The collector's pauses on this thread, to tell which gaps they make.
  const pauses: Array<[number, number]> = [];
  const observer = new PerformanceObserver((list) => { for (const e of list.getEntries()) pauses.push([e.startTime, e.startTime + e.duration]); });
  observer.observe({ entryTypes: ['gc'] });
  const stream = streamStart(dp, ports, ends[0], ends[1], stateDir);
  try {
    await controller.settled();
    await sleep(300);
    const t0 = performance.now();
    stream.phase(PHASE_IDLE);
    await sleep(600);
    stream.phase(PHASE_NONE);
    const t0end = performance.now();
    await sleep(100);
    const t1 = performance.now();
    stream.phase(PHASE_RELOAD);
    const faults = process.resourceUsage().minorPageFault;
    await controller.putPolicy(changed, null, 'bench');
    const reloadMs = performance.now() - t1;
    const reloadFreshPages = process.resourceUsage().minorPageFault - faults;
    await sleep(300);
    // Idle again for as long as the reload took: this VM's own pauses (its host runs other guests) grow with the
    // window, so the reload's gaps are set beside an idle window of the same length, not only the 0.6 s above.
    const t4 = performance.now();
    stream.phase(PHASE_IDLE_AS_RELOAD);
    await sleep(Math.min(reloadMs, IDLE_AS_RELOAD_MAX_MS));
    stream.phase(PHASE_NONE);
    const t4end = performance.now();
    await sleep(100);
    // Quarantines put on and lifted in turn, a tenth of a second apart (as an operator or a security
    // tool would, not back to back): each timed from the call until it is enforced.
    const t2 = performance.now();
    stream.phase(PHASE_TAG);
    const tagTimes: number[] = [];
    for (let k = 0; k < TAG_CHANGES; k++) {
      const t = performance.now();
      await controller.changeTags(local[local.length - 1], k % 2 === 0 ? { add: ['quarantine'], reason: 'bench', by: 'bench' } : { remove: ['quarantine'], reason: 'bench', by: 'bench' });
      tagTimes.push(performance.now() - t);
      await sleep(100);
    }
    const tagMs = median(tagTimes), tagMaxMs = Math.max(...tagTimes);
    await sleep(200);
    const t3 = performance.now();
    stream.phase(PHASE_NONE);
    // The same through the API, as an operator's or a security tool's call reaches the daemon.
    let tagApi: { inForce: number[]; answered: number[] } | null = null;
    if (!place) {
      const api = new ApiServer(controller, dp, { version: 'bench', socketPath: join(stateDir, 'api.sock'), listen: null, token: null, host: 'h1', analytics });
      await api.start();
      try {
        // The changes above left the quarantine on when there was an odd number of them: the client lifts it first then.
        const tagger = await taggerStart(join(stateDir, 'api.sock'), local[local.length - 1], TAG_CHANGES, TAG_CHANGES % 2 === 1);
        const calls = (await tagger.go()).calls;
        const inForce = calls.map(([from, to]) => {
          const at = appliedAt.find((a) => a >= from && a <= to);
          if (at === undefined) throw new Error('bench scale: a tag change through the API was answered but not seen put in force');
          return at - from;
        });
        tagApi = { inForce, answered: calls.map(([from, to]) => to - from) };
      } finally {
        api.close();
      }
      await sleep(100);
    }
    // As a daemon with --metrics and --state-dir: Prometheus (another process) scrapes, one after the
    // other, then the rule analytics' periodic save.
    let scrape: { ms: number; bytes: number; saveMs: number; from: number; to: number } | null = null;
    if (!place) {
      const { server, port } = await metricsServe(metricsRegistry(dp, controller, null, analytics), '127.0.0.1', 0);
      try {
        const scraper = await scraperStart(port, SCRAPES);
        await sleep(100);
        const from = performance.now();
        stream.phase(PHASE_SCRAPE);
        const scraped = await scraper.go();
        const s0 = performance.now();
        await analytics.saveInSlices();
        const saveMs = performance.now() - s0;
        await sleep(100);
        stream.phase(PHASE_NONE);
        scrape = { ms: median(scraped.ms), bytes: scraped.bytes, saveMs, from, to: performance.now() };
      } finally {
        server.close();
      }
    }
    stream.stop();
    if (stream.frames < 100) throw new Error(`bench scale: the stream forwarded only ${stream.frames} frames`);
    await sleep(10); // the last collector entries are delivered asynchronously
    const longestPause = (from: number, to: number) => pauses.reduce((m, [a, b]) => (a >= from && a < to ? Math.max(m, b - a) : m), 0);
    const phase = (p: number, from: number, to: number) => ({ longest: stream.longest(p), over2ms: stream.over2ms(p), longestGcMs: longestPause(from, to) });
    return {
      baseline: phase(PHASE_IDLE, t0, t0end), reload: phase(PHASE_RELOAD, t1, t4), idleAsReload: phase(PHASE_IDLE_AS_RELOAD, t4, t4end), tag: phase(PHASE_TAG, t2, t3), reloadMs, tagMs, tagMaxMs, tagApi,
      scrape: scrape === null ? null : { ...phase(PHASE_SCRAPE, scrape.from, scrape.to), ms: scrape.ms, bytes: scrape.bytes, saveMs: scrape.saveMs },
      longestPartMs: preparer.longestPartMs, parts: preparer.parts, longGaps: stream.longGaps, forwardingCpu: placed?.forwarding ?? null, reloadFreshPages,
    };
  } finally {
    stream.stop();
    observer.disconnect();
    await controller.close();
    store.close();
    analytics.stop();
    rmSync(stateDir, { recursive: true, force: true });
    dp.stop();
    placementUndo();
    if (sweep !== null) clearInterval(sweep);
    yieldOthersUndo();
  }
}

/** The two workloads of a policy that a stream between them is allowed (tcp/8080). */
function allowedPair(which: ScaleCase): [string, string] {
  if (which === 'rules10k') return ['w0', 'w500']; // application 0: web -> app
  if (which === 'groups1m') return ['w0', 'w10']; // web -> app
  return ['w0', 'w1']; // application 0: web -> app
}

type StaticFigures = Omit<ScaleRow, 'placed' | 'scrapeMs' | 'scrapeBytes' | 'analyticsSaveMs' | 'gapScrapeMs' | 'gapsOver2msScrape' | 'gcPauseScrapeMs' | 'gapBaselineMs' | 'gapReloadMs' | 'gapTagMs' | 'gapsOver2msBaseline' | 'gapsOver2msReload' | 'gapsOver2msTag' | 'gapIdleAsReloadMs' | 'gapsOver2msIdleAsReload' | 'idleAsReloadWindowMs' | 'reloadMs' | 'reloadFreshPages' | 'tagEnforcedMs' | 'tagEnforcedMaxMs' | 'tagApiMs' | 'tagApiMaxMs' | 'tagApiAnsweredMs' | 'gcPauseBaselineMs' | 'gcPauseReloadMs' | 'gcPauseTagMs' | 'longestHandoverMs' | 'handoverParts'>;

/** Everything but the forwarding gaps, in a function of its own so that what it builds is garbage when it returns. */
function staticFigures(which: ScaleCase, doc: Record<string, unknown>, progress: (line: string) => void): StaticFigures {
  const json = JSON.stringify(doc);
  const faultsBefore = process.resourceUsage().minorPageFault;
  const [parsed, loadJsonMs] = time(() => policyParse(json, `${which}.json`, { shadows: false }));
  const loadJsonFreshPages = process.resourceUsage().minorPageFault - faultsBefore;
  if (!parsed.policy) throw new Error(`${which}: ${parsed.problems.slice(0, 3).map((p) => p.message).join('; ')}`);
  const loadJsonWarmMs = median([0, 1, 2].map(() => time(() => policyParse(json, `${which}.json`, { shadows: false }))[1]));
  let loadYamlMs: number | null = null, loadYamlWarmMs: number | null = null;
  let daemonJson: { ms: number; freshPages: number } | null = null, daemonYaml: { ms: number; freshPages: number } | null = null;
  if (which === 'rules10k') {
    const yamlText = yamlStringify(doc);
    loadYamlMs = time(() => policyParse(yamlText, `${which}.yaml`, { shadows: false }))[1];
    loadYamlWarmMs = median([0, 1, 2].map(() => time(() => policyParse(yamlText, `${which}.yaml`, { shadows: false }))[1]));
    progress(`${which}: a daemon's first load, in fresh processes`);
    daemonJson = daemonFirstLoad(json, `${which}.json`);
    daemonYaml = daemonFirstLoad(yamlText, `${which}.yaml`);
  }
  const policy = parsed.policy;
  progress(`${which}: loaded (${loadJsonMs.toFixed(0)} ms); shadow analysis`);
  const [shadows, shadowMs] = time(() => findShadowedRules(policy));
  gc();
  const before = memoryNow();
  const [compiled, compileMs] = time(() => policyCompile(policy));
  gc();
  const memoryMB = (memoryNow() - before) / 1e6;
  progress(`${which}: compiled in ${compileMs.toFixed(0)} ms; lookups`);
  const lps = lookupsPerSec(compiled, lookupKeys(doc, 1 << 16));
  const tagMs: number[] = [];
  let running = compiled;
  const victim = [...policy.workloads.keys()][3];
  for (let i = 0; i < 5; i++) {
    const [next, ms] = time(() => policyCompile(i % 2 === 0 ? quarantined(policy, victim) : policy, running));
    running = next;
    tagMs.push(ms);
  }
  const groups = doc.groups as Record<string, { cidrs?: string[] }>;
  return {
    case: which,
    rules: compiled.stats.rules,
    workloads: policy.workloads.size,
    groupAddresses: Object.values(groups).reduce((n, x) => n + (x.cidrs?.length ?? 0), 0),
    documentBytes: json.length,
    loadJsonMs,
    loadJsonFreshPages,
    loadYamlMs,
    loadJsonWarmMs,
    loadYamlWarmMs,
    loadDaemonJsonMs: daemonJson?.ms ?? null,
    loadDaemonJsonFreshPages: daemonJson?.freshPages ?? null,
    loadDaemonYamlMs: daemonYaml?.ms ?? null,
    shadowMs,
    shadowFindings: shadows.length,
    compileMs,
    compiledEntries: compiled.stats.atoms,
    compiledBytes: compiled.stats.bytes,
    memoryMB,
    lookupsPerSec: lps,
    tagChangeMs: median(tagMs),
    tagChangeHostMs: hostTagChanges(doc, victim),
  };
}

export async function benchScale(opts: { cases?: ScaleCase[] } = {}, progress: (line: string) => void = () => undefined): Promise<ScaleResult> {
  const rows: ScaleRow[] = [];
  // As the daemon runs (util/placement.ts): the figures below, the compile times among them, with its collector.
  scavengeAlone();
  progress('the scheduling floor: an empty loop alone on one CPU, the others idle, then busy');
  const floor = await schedulingFloor();
  const pageTouchUs = pageTouchCost();
  for (const which of opts.cases ?? SCALE_CASES) {
    progress(`${which}: generating`);
    const { figures, setup } = ((doc) => ({ figures: staticFigures(which, doc, progress), setup: gapSetup(doc, allowedPair(which)) }))(scalePolicy(which));
    // The forwarding thread as a daemon's: without the document object, the copies and full compiles measured
    // above in its heap.
    gc();
    progress(`${which}: forwarding gaps`);
    const g = await gaps(setup);
    gc();
    progress(`${which}: forwarding gaps with the forwarding thread's CPU kept to itself`);
    const p = await gaps(setup, true);
    rows.push({
      ...figures,
      gapBaselineMs: g.baseline.longest,
      gapReloadMs: g.reload.longest,
      gapTagMs: g.tag.longest,
      gapsOver2msBaseline: g.baseline.over2ms,
      gapIdleAsReloadMs: g.idleAsReload.longest,
      gapsOver2msIdleAsReload: g.idleAsReload.over2ms,
      idleAsReloadWindowMs: Math.min(g.reloadMs, IDLE_AS_RELOAD_MAX_MS),
      gapsOver2msReload: g.reload.over2ms,
      gapsOver2msTag: g.tag.over2ms,
      reloadMs: g.reloadMs,
      reloadFreshPages: g.reloadFreshPages,
      tagEnforcedMs: g.tagMs,
      tagEnforcedMaxMs: g.tagMaxMs,
      tagApiMs: g.tagApi === null ? null : median(g.tagApi.inForce),
      tagApiMaxMs: g.tagApi === null ? null : Math.max(...g.tagApi.inForce),
      tagApiAnsweredMs: g.tagApi === null ? null : median(g.tagApi.answered),
      gcPauseBaselineMs: g.baseline.longestGcMs,
      gcPauseReloadMs: g.reload.longestGcMs,
      gcPauseTagMs: g.tag.longestGcMs,
      longestHandoverMs: g.longestPartMs,
      handoverParts: g.parts,
      scrapeMs: g.scrape!.ms,
      scrapeBytes: g.scrape!.bytes,
      analyticsSaveMs: g.scrape!.saveMs,
      gapScrapeMs: g.scrape!.longest,
      gapsOver2msScrape: g.scrape!.over2ms,
      gcPauseScrapeMs: g.scrape!.longestGcMs,
      placed: p.forwardingCpu === null ? null : {
        forwardingCpu: p.forwardingCpu,
        gapBaselineMs: p.baseline.longest, gapReloadMs: p.reload.longest, gapTagMs: p.tag.longest,
        gapsOver2msBaseline: p.baseline.over2ms, gapsOver2msReload: p.reload.over2ms, gapsOver2msTag: p.tag.over2ms,
        gapIdleAsReloadMs: p.idleAsReload.longest, gapsOver2msIdleAsReload: p.idleAsReload.over2ms,
        gcPauseReloadMs: p.reload.longestGcMs, reloadMs: p.reloadMs, tagEnforcedMs: p.tagMs, tagEnforcedMaxMs: p.tagMaxMs,
      },
    });
  }
  return { machine: machineInfo(), floor, pageTouchUs, rows };
}

export function formatScale(r: ScaleResult): string {
  const f = (x: number, d = 0) => x.toFixed(d);
  const lines = [machineLine(r.machine), ''];
  const fl = r.floor;
  lines.push(fl === null
    ? 'scheduling floor: not measured (the process has one CPU)'
    : `scheduling floor: an empty loop alone on CPU ${fl.forwardingCpu}: longest gap ${f(fl.quietLongestMs, 1)} ms (${fl.quietOver2ms} over 2 ms in 3 s) with the other CPUs idle, ${f(fl.busyLongestMs, 1)} ms (${fl.busyOver2ms} over 2 ms) while another process spins on them, ${f(fl.allocatingLongestMs, 1)} ms (${fl.allocatingOver2ms} over 2 ms) while another process makes and drops objects there as a compile does, ${f(fl.freshLongestMs, 1)} ms (${fl.freshOver2ms} over 2 ms) while another process touches memory there for the first time as a compiling heap grows (up to ${FRESH_NEIGHBOUR_MB} MB), ${f(fl.unmappingLongestMs, 1)} ms (${fl.unmappingOver2ms} over 2 ms) while a thread of this process maps, touches and unmaps 64 MB there over and over, ${f(fl.unmappingApartLongestMs, 1)} ms (${fl.unmappingApartOver2ms} over 2 ms) while another process does the same`);
  lines.push(`fresh memory: ${f(r.pageTouchUs, 1)} us to touch a page for the first time (64 MB, written once a page)`, '');
  for (const row of r.rows) {
    lines.push(
      `${row.case}: ${row.rules} rules, ${row.workloads} workloads, ${row.groupAddresses} addresses in CIDR groups, ${(row.documentBytes / 1e6).toFixed(1)} MB of JSON`,
      `  load + validate   JSON ${f(row.loadJsonMs)} ms first in the process (${row.loadJsonFreshPages} pages touched for the first time: ${f((row.loadJsonFreshPages * r.pageTouchUs) / 1000)} ms at the cost above), ${f(row.loadJsonWarmMs)} ms again${row.loadYamlMs === null ? '' : `; YAML ${f(row.loadYamlMs)} ms first, ${f(row.loadYamlWarmMs ?? 0)} ms again`}        (target: 10,000 rules under 300 ms)`,
      ...(row.loadDaemonJsonMs === null ? [] : [`  daemon's first    JSON ${f(row.loadDaemonJsonMs)} ms (${row.loadDaemonJsonFreshPages} pages touched for the first time), YAML ${f(row.loadDaemonYamlMs ?? 0)} ms: in the compiling thread of a fresh process, as a daemon loads its policy file (median of ${DAEMON_FIRST_LOADS} processes)`]),
      `  shadow analysis   ${f(row.shadowMs)} ms, ${row.shadowFindings} findings        (target: 10,000 rules under 1 s)`,
      `  compile           ${f(row.compileMs)} ms, ${row.compiledEntries} entries, ${(row.compiledBytes / 1e6).toFixed(1)} MB of tables, ${f(row.memoryMB)} MB held        (target: a million addresses under 2 s and 200 MB)`,
      `  lookups           ${f(row.lookupsPerSec / 1e6, 2)} M/s on one core        (target: 10,000 rules above 5 M/s)`,
      `  tag change        ${f(row.tagChangeMs, 1)} ms to compile every workload's point; ${f(row.tagChangeHostMs, 1)} ms for one host's 50 vNICs (the daemon's path); from the call to enforced through the controller, while forwarding: median ${f(row.tagEnforcedMs, 1)} ms, longest ${f(row.tagEnforcedMaxMs, 1)} ms of ${TAG_CHANGES}        (target: under 2 ms from the API call)`,
      ...(row.tagApiMs === null ? [] : [`                    through the API, from another process (a new connection each): in force ${f(row.tagApiMs, 1)} ms after the client's call (median; longest ${f(row.tagApiMaxMs ?? 0, 1)} ms of ${TAG_CHANGES}), answered after ${f(row.tagApiAnsweredMs ?? 0, 1)} ms`]),
      `  full reload       ${f(row.reloadMs)} ms from the call to in force, compiled in the worker thread while forwarding; ${row.reloadFreshPages} pages touched for the first time by the process (${f((row.reloadFreshPages * r.pageTouchUs) / 1000)} ms at the cost above)`,
      `  forwarding gap    longest: idle ${f(row.gapBaselineMs, 1)} ms; full reload ${f(row.gapReloadMs, 1)} ms; tag change ${f(row.gapTagMs, 1)} ms        (target: under 2 ms)`,
      `                    gaps over 2 ms: idle ${row.gapsOver2msBaseline} in 0.6 s; reload ${row.gapsOver2msReload}; tag change ${row.gapsOver2msTag}`,
      `                    idle again for as long as the reload (${f(row.idleAsReloadWindowMs / 1000, 1)} s): longest ${f(row.gapIdleAsReloadMs, 1)} ms, ${row.gapsOver2msIdleAsReload} over 2 ms`,
      `                    longest collector pause of the forwarding thread: idle ${f(row.gcPauseBaselineMs, 1)} ms; reload ${f(row.gcPauseReloadMs, 1)} ms; tag change ${f(row.gcPauseTagMs, 1)} ms`,
      `  hand-over         ${row.handoverParts} parts from the compiling thread, the longest taken in ${f(row.longestHandoverMs, 2)} ms`,
      `  metrics + save    ${SCRAPES} Prometheus scrapes from another process, ${(row.scrapeBytes / 1e6).toFixed(1)} MB each in ${f(row.scrapeMs)} ms, then the rule analytics' save in ${f(row.analyticsSaveMs)} ms; longest forwarding gap ${f(row.gapScrapeMs, 1)} ms, ${row.gapsOver2msScrape} over 2 ms, longest collector pause ${f(row.gcPauseScrapeMs, 1)} ms`,
      ...(row.placed === null
        ? ['  --forwarding-cpu  not measured: this machine gives the process one CPU']
        : [
          `  --forwarding-cpu  (the forwarding thread alone on CPU ${row.placed.forwardingCpu}) longest gap: idle ${f(row.placed.gapBaselineMs, 1)} ms; full reload ${f(row.placed.gapReloadMs, 1)} ms; tag change ${f(row.placed.gapTagMs, 1)} ms`,
          `                    gaps over 2 ms: idle ${row.placed.gapsOver2msBaseline}; reload ${row.placed.gapsOver2msReload}; tag change ${row.placed.gapsOver2msTag}; longest collector pause in the reload ${f(row.placed.gcPauseReloadMs, 1)} ms`,
          `                    idle again for as long as the reload: longest ${f(row.placed.gapIdleAsReloadMs, 1)} ms, ${row.placed.gapsOver2msIdleAsReload} over 2 ms`,
          `                    full reload ${f(row.placed.reloadMs)} ms; tag change enforced from the call: median ${f(row.placed.tagEnforcedMs, 1)} ms, longest ${f(row.placed.tagEnforcedMaxMs, 1)} ms`,
        ]),
      '',
    );
  }
  return lines.join('\n');
}
