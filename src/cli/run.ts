/**
 * `tapwall run`: the daemon. Loads and compiles the policy, opens a port per
 * workload vNIC (and the uplink, if named), and runs the data plane on the
 * event loop until SIGTERM or SIGINT. SIGHUP reloads the policy file: one
 * that fails validation is logged and the running policy stays in force.
 */
import pino from 'pino';
import { PerformanceObserver } from 'node:perf_hooks';
import { policyLoad } from '../policy/load.js';
import { policyCompile } from '../policy/compile.js';
import { PolicyError, formatProblem } from '../policy/errors.js';
import { Dataplane, PC, PC_COUNT, type PortSpec } from '../datapath/dataplane.js';
import type { PortMode } from '../io/ports.js';
import { OUTCOME_NAMES, OUTCOME_COUNT } from '../packet/verdict.js';
import { metricsRegistry, metricsServe } from '../metrics/metrics.js';

export interface RunOptions {
  config: string;
  mode: PortMode;
  uplink?: string;
  loose?: boolean;
  flowCapacity?: number;
  quota?: number;
  statsEvery?: number;
  tapPersist?: boolean;
  tapOwner?: number;
  offload?: boolean;
  /** host:port for /metrics (port 0: any free port); unset: no metrics server. */
  metrics?: string;
}

export async function runDaemon(opts: RunOptions): Promise<void> {
  const log = pino({ name: 'tapwall' }, pino.destination(2));
  const { policy, warnings } = policyLoad(opts.config);
  for (const w of warnings) log.warn({ problem: w }, formatProblem(w));
  const compiled = policyCompile(policy);
  const specs: PortSpec[] = [...policy.workloads.values()].map((w) => ({ name: w.nic, mode: opts.mode, workload: w.name }));
  if (opts.uplink) specs.push({ name: opts.uplink, mode: opts.mode === 'pcap' ? 'pcap' : 'attach', workload: null });
  const errorsLogged = new Map<string, number>();
  const dp = new Dataplane(compiled, specs, {
    loose: opts.loose,
    flowCapacity: opts.flowCapacity,
    perPortQuota: opts.quota,
    tap: { persist: opts.tapPersist, ownerUid: opts.tapOwner, offload: opts.offload },
    onError: (port, message) => {
      // At most one log line per port per 10 s; the counters keep the full count.
      const now = Date.now();
      if ((errorsLogged.get(port) ?? 0) + 10_000 > now) return;
      errorsLogged.set(port, now);
      log.error({ port }, message);
    },
  });
  dp.start();
  let metricsUrl: string | null = null;
  if (opts.metrics) {
    const m = /^(.*):(\d+)$/.exec(opts.metrics);
    if (!m) throw Object.assign(new Error(`--metrics: expected HOST:PORT, like 127.0.0.1:9810, found '${opts.metrics}'`), { code: 'EMETRICS' });
    const host = m[1].replace(/^\[|\]$/g, '');
    const { port } = await metricsServe(metricsRegistry(dp), host, Number(m[2]));
    metricsUrl = `http://${host.includes(':') ? `[${host}]` : host}:${port}/metrics`;
  }
  const ports = dp.ports.map((p) => ({ name: p.io.name, mode: p.io.mode, workload: p.spec.workload }));
  log.info({ ports, rules: compiled.stats.rules, metrics: metricsUrl }, 'tapwall running');
  // One machine-readable line on stdout for supervisors and tests.
  process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid, ports, metrics: metricsUrl })}\n`);

  // Garbage collections since start: the per-packet path allocates nothing, and this shows it.
  let gcCount = 0;
  new PerformanceObserver((list) => { gcCount += list.getEntries().length; }).observe({ entryTypes: ['gc'] });

  const stats = () => {
    const out: Record<string, Record<string, number>> = {};
    dp.ports.forEach((p, i) => {
      const o: Record<string, number> = {};
      for (let k = 0; k < OUTCOME_COUNT; k++) { const v = dp.outcomes[i * OUTCOME_COUNT + k]; if (v) o[OUTCOME_NAMES[k]] = v; }
      o.rx = dp.portCounters[i * PC_COUNT + PC.rxPackets];
      o.tx = dp.portCounters[i * PC_COUNT + PC.txPackets];
      o.txDropped = dp.portCounters[i * PC_COUNT + PC.txDropped];
      o.replies = dp.portCounters[i * PC_COUNT + PC.replies];
      o.rxErrors = dp.portCounters[i * PC_COUNT + PC.rxErrors];
      o.up = p.up ? 1 : 0;
      out[p.io.name] = o;
    });
    return out;
  };
  if (opts.statsEvery && opts.statsEvery > 0) {
    setInterval(() => log.info({ stats: stats(), flows: dp.table.live }, 'stats'), opts.statsEvery * 1000).unref();
  }
  process.on('SIGUSR2', () => {
    process.stdout.write(`${JSON.stringify({ stats: stats(), flows: dp.table.live, gc: gcCount })}\n`);
  });
  process.on('SIGHUP', () => {
    try {
      const next = policyLoad(opts.config);
      dp.setPolicy(policyCompile(next.policy));
      log.info({ config: opts.config }, 'policy reloaded');
      process.stdout.write(`${JSON.stringify({ reloaded: true })}\n`);
    } catch (e) {
      const msg = e instanceof PolicyError ? e.problems.map(formatProblem).join('\n') : (e as Error).message;
      log.error({ config: opts.config }, `reload failed, the running policy stays: ${msg}`);
      process.stdout.write(`${JSON.stringify({ reloaded: false })}\n`);
    }
  });
  const stop = (signal: string) => {
    log.info({ signal }, 'stopping');
    dp.stop();
    process.stdout.write(`${JSON.stringify({ stopped: true, stats: stats() })}\n`);
    process.exit(0);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
