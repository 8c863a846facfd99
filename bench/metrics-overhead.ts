/**
 * `tapwall bench metrics`: what Prometheus metrics cost the data plane.
 *
 * The data plane runs on in-memory ports (no kernel in the way, so the loop
 * is CPU-bound and any cost shows): port A hands it batches of 64 UDP frames
 * of 1,024 established flows towards port B, and it forwards them through
 * SpoofGuard, the flow cache and the counters, yielding to the event loop
 * every few hundred batches as it does when ports are watched by libuv.
 * Two conditions, each in a fresh process (the default process metrics start
 * monitors that cannot be stopped again): metrics off, and metrics on with the
 * registry scraped every second (what Prometheus does). Rounds alternate
 * off/on; the report gives the median frames per second of each and their
 * ratio, and what one scrape costs.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { frameBuild } from '../src/packet/build.js';
import { policyParse } from '../src/policy/load.js';
import { policyCompile } from '../src/policy/compile.js';
import { Dataplane, type PortSpec } from '../src/datapath/dataplane.js';
import type { PortIo } from '../src/io/ports.js';
import { metricsRegistry } from '../src/metrics/metrics.js';
import { machineInfo, machineLine, median, type MachineInfo } from './machine.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const FLOWS = 1024;
const BATCH = 64;
const BATCHES_PER_TURN = 256;

const POLICY = `default: drop
workloads:
  a: { nic: twm-a, mac: "02:7c:00:00:00:0a", ips: [10.124.0.1] }
  b: { nic: twm-b, mac: "02:7c:00:00:00:0b", ips: [10.124.0.2] }
sections:
  - name: bench
    rules:
      - { id: a-to-b, from: 10.124.0.1, to: 10.124.0.2, services: [udp/9], action: allow }
`;

/** Port A: the same 64 frames every read (written into the buffer once); port B: takes everything. */
class MemoryPort implements PortIo {
  readonly vnetHdr = 0;
  readonly mode = 'tap' as const;
  private filled: Uint8Array | null = null;
  private next = 0;
  constructor(readonly name: string, private readonly frames: Uint8Array[]) {}
  start(): void {}
  dropped(): number { return 0; }
  read(buf: Uint8Array, offsets: Int32Array, lengths: Int32Array, max: number, stride: number): number {
    if (this.frames.length === 0) return 0;
    const n = Math.min(max, BATCH);
    if (this.filled !== buf) {
      this.filled = buf;
      this.next = 0;
    }
    for (let i = 0; i < n; i++) {
      // Rotate through the flows: each batch is the next 64 of them.
      const f = this.frames[(this.next + i) % this.frames.length];
      buf.set(f, i * stride);
      offsets[i] = i * stride;
      lengths[i] = f.length;
    }
    this.next = (this.next + n) % this.frames.length;
    return n;
  }
  write(_buf: Uint8Array, _o: Int32Array, _l: Int32Array, count: number): number {
    return count;
  }
  close(): void {}
}

export interface MetricsChildResult { framesPerSecond: number; framesPerCpuSecond: number; scrapes: number; scrapeMs: number; gc: number }

/** One condition, in this process. */
export async function metricsChild(withMetrics: boolean, seconds: number): Promise<MetricsChildResult> {
  const { policy } = policyParse(POLICY, '(bench)', { shadows: false });
  const frames = Array.from({ length: FLOWS }, (_, i) => frameBuild({
    family: 4, proto: 17, src: '10.124.0.1', dst: '10.124.0.2', sport: 10_000 + i, dport: 9,
    srcMac: '02:7c:00:00:00:0a', dstMac: '02:7c:00:00:00:0b',
  }));
  const specs: PortSpec[] = [{ name: 'twm-a', mode: 'tap', workload: 'a' }, { name: 'twm-b', mode: 'tap', workload: 'b' }];
  const dp = new Dataplane(policyCompile(policy!), specs, { portOpener: (s) => new MemoryPort(s.name, s.name === 'twm-a' ? frames : []) });
  let scrapes = 0, scrapeMs = 0;
  let timer: NodeJS.Timeout | null = null;
  if (withMetrics) {
    const registry = metricsRegistry(dp);
    timer = setInterval(() => {
      const t0 = performance.now();
      void registry.metrics().then(() => { scrapes++; scrapeMs += performance.now() - t0; });
    }, 1000);
  }
  const { PerformanceObserver } = await import('node:perf_hooks');
  let gc = 0;
  const obs = new PerformanceObserver((l) => { gc += l.getEntries().length; });
  obs.observe({ entryTypes: ['gc'] });
  const turn = () => { for (let i = 0; i < BATCHES_PER_TURN / 16; i++) dp.pump(0); }; // pump reads up to 16 batches
  // Warm up: open the flows, let the JIT settle.
  const warmEnd = performance.now() + 1000;
  while (performance.now() < warmEnd) { turn(); await new Promise((r) => setImmediate(r)); }
  const rx0 = dp.portCounters[0];
  gc = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  while (performance.now() < end) {
    turn();
    await new Promise((r) => setImmediate(r));
  }
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  if (timer) clearInterval(timer);
  obs.disconnect();
  const forwarded = dp.outcomes[0]; // port A, outcome forward
  if (forwarded < dp.portCounters[0] * 0.99) throw new Error('bench metrics: frames were not forwarded');
  const received = dp.portCounters[0] - rx0;
  return { framesPerSecond: Math.round(received / elapsed), framesPerCpuSecond: Math.round(received / cpuSeconds), scrapes, scrapeMs: scrapes ? scrapeMs / scrapes : 0, gc };
}

export interface MetricsOverheadResult {
  machine: MachineInfo;
  seconds: number;
  off: number[];
  on: number[];
  ratio: number;
  /** Frames per CPU-second of the process (less exposed to other tenants than wall time). */
  offCpu: number[];
  onCpu: number[];
  cpuRatio: number;
  scrapeMs: number;
  scrapes: number;
}

export async function benchMetricsOverhead(opts: { rounds?: number; seconds?: number } = {}): Promise<MetricsOverheadResult> {
  const rounds = opts.rounds ?? 5, seconds = opts.seconds ?? 4;
  const off: number[] = [], on: number[] = [], offCpu: number[] = [], onCpu: number[] = [];
  let scrapeMs = 0, scrapes = 0;
  for (let r = 0; r < rounds; r++) {
    for (const mode of ['off', 'on'] as const) {
      const p = spawnSync(process.execPath, [join(root, 'bin/tapwall.js'), 'bench', 'metrics', '--child', mode, '--seconds', String(seconds)], { encoding: 'utf8', timeout: (seconds + 30) * 1000 });
      if (p.status !== 0) throw new Error(`bench metrics child failed: ${p.stderr}`);
      const res = JSON.parse(p.stdout) as MetricsChildResult;
      (mode === 'on' ? on : off).push(res.framesPerSecond);
      (mode === 'on' ? onCpu : offCpu).push(res.framesPerCpuSecond);
      if (mode === 'on') { scrapeMs += res.scrapeMs * res.scrapes; scrapes += res.scrapes; }
    }
  }
  return { machine: machineInfo(), seconds, off, on, ratio: median(on) / median(off), offCpu, onCpu, cpuRatio: median(onCpu) / median(offCpu), scrapeMs: scrapes ? scrapeMs / scrapes : 0, scrapes };
}

export function formatMetricsOverhead(r: MetricsOverheadResult): string {
  return [
    machineLine(r.machine),
    `data plane on in-memory ports, 64-frame batches of 1,024 UDP flows, one core; ${r.off.length} alternating rounds of ${r.seconds} s`,
    `metrics off:                    ${r.off.join(', ')} frames/s (median ${median(r.off)})`,
    `metrics on, scraped every 1 s:  ${r.on.join(', ')} frames/s (median ${median(r.on)})`,
    `on / off: ${r.ratio.toFixed(3)} (${((r.ratio - 1) * 100).toFixed(1)}%; rounds on this shared machine vary by several percent either way)`,
    `per CPU-second of the process: off median ${median(r.offCpu)}, on median ${median(r.onCpu)}; on / off ${r.cpuRatio.toFixed(3)} (${((r.cpuRatio - 1) * 100).toFixed(1)}%)`,
    `one scrape takes ${r.scrapeMs.toFixed(2)} ms of the data plane's thread: ${(r.scrapeMs / 10).toFixed(2)}% of each second at one scrape per second (${r.scrapes} scrapes)`,
  ].join('\n');
}
