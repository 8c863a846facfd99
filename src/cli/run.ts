/**
 * `tapwall run`: the daemon. Loads and compiles the policy, opens a port per
 * workload vNIC (and the uplink, if named), and runs the data plane on the
 * event loop until SIGTERM or SIGINT, with the controller (policy and tags
 * from the store, the config file watched), the API, the flow log and the
 * metrics beside it. SIGHUP re-reads the policy file: one that fails
 * validation is logged and the running policy stays in force. SIGUSR1 reopens
 * the flow log (for logrotate); SIGUSR2 prints counters.
 */
import pino from 'pino';
import { PerformanceObserver } from 'node:perf_hooks';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { policyLoad } from '../policy/load.js';
import { policyCompile } from '../policy/compile.js';
import { PolicyError, formatProblem } from '../policy/errors.js';
import { FileStore } from '../control/store.js';
import { ControlError, Controller } from '../control/controller.js';
import { ApiServer } from '../control/api.js';
import { FlowLogWriter } from '../control/flowLogWriter.js';
import { portCounts } from '../control/views.js';
import { Dataplane, type PortSpec } from '../datapath/dataplane.js';
import type { PortMode } from '../io/ports.js';
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
  /** Directory for the dynamic tags (tags.json) and the audit log (audit.jsonl). */
  stateDir: string;
  /** Unix socket for the API; null: none. */
  apiSocket: string | null;
  /** host:port for the API over TCP (needs apiTokenFile). */
  apiListen?: string;
  apiTokenFile?: string;
  /** Flow log file; flowLogStdout also (or only) to stdout; rate per vNIC per second. */
  flowLog?: string;
  flowLogStdout?: boolean;
  flowLogRate: number;
  version: string;
}

export async function runDaemon(opts: RunOptions): Promise<void> {
  const log = pino({ name: 'tapwall' }, pino.destination(2));
  const { policy, warnings } = policyLoad(opts.config, { shadows: false });
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
    flowLog: opts.flowLog || opts.flowLogStdout ? { rate: opts.flowLogRate, burst: Math.max(1, opts.flowLogRate * 2) } : undefined,
    onError: (port, message) => {
      // At most one log line per port per 10 s; the counters keep the full count.
      const now = Date.now();
      if ((errorsLogged.get(port) ?? 0) + 10_000 > now) return;
      errorsLogged.set(port, now);
      log.error({ port }, message);
    },
    onInfo: (port, message) => log.info({ port }, message),
  });
  // The store holds the policy text and the dynamic tags; the controller applies them (the same policy as above, plus tags).
  mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
  const store = new FileStore(opts.config, join(opts.stateDir, 'tags.json'));
  const controller = new Controller(store, dp, { log, auditPath: join(opts.stateDir, 'audit.jsonl') });
  try {
    await controller.start();
  } catch (e) {
    dp.stop();
    if (e instanceof ControlError) throw new PolicyError(e.problems);
    throw e;
  }
  let api: ApiServer | null = null;
  if (opts.apiSocket || opts.apiListen) {
    if (opts.apiSocket) mkdirSync(dirname(opts.apiSocket), { recursive: true, mode: 0o755 });
    const token = opts.apiTokenFile ? readFileSync(opts.apiTokenFile, 'utf8').trim() : null;
    if (opts.apiTokenFile && (!token || token.length < 16)) throw Object.assign(new Error(`${opts.apiTokenFile}: the API token must be at least 16 characters`), { code: 'EAPITOKEN' });
    api = new ApiServer(controller, dp, { version: opts.version, socketPath: opts.apiSocket, listen: opts.apiListen ?? null, token });
    await api.start();
  }
  const flowLog = dp.ct.flowLog ? new FlowLogWriter(dp, dp.ct.flowLog, opts.flowLog ?? null, opts.flowLogStdout ?? false) : null;
  flowLog?.start();
  dp.start();
  let metricsUrl: string | null = null;
  if (opts.metrics) {
    const m = /^(.*):(\d+)$/.exec(opts.metrics);
    if (!m) throw Object.assign(new Error(`--metrics: expected HOST:PORT, like 127.0.0.1:9810, found '${opts.metrics}'`), { code: 'EMETRICS' });
    const host = m[1].replace(/^\[|\]$/g, '');
    const { port } = await metricsServe(metricsRegistry(dp, controller), host, Number(m[2]));
    metricsUrl = `http://${host.includes(':') ? `[${host}]` : host}:${port}/metrics`;
  }
  const ports = dp.ports.map((p) => ({ name: p.io.name, mode: p.io.mode, workload: dp.workloadOf(p.index) }));
  const apiAddr = api ? api.addresses : null;
  log.info({ ports, rules: compiled.stats.rules, metrics: metricsUrl, api: apiAddr }, 'tapwall running');
  // One machine-readable line on stdout for supervisors and tests.
  process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid, ports, metrics: metricsUrl, api: apiAddr })}\n`);

  // Garbage collections since start: the per-packet path allocates nothing, and this shows it.
  let gcCount = 0;
  new PerformanceObserver((list) => { gcCount += list.getEntries().length; }).observe({ entryTypes: ['gc'] });

  const stats = () => {
    const out: Record<string, Record<string, number>> = {};
    dp.ports.forEach((p, i) => {
      const c = portCounts(dp, i);
      // Outcomes that happened, then the port's own counters, flat.
      const o: Record<string, number> = Object.fromEntries(Object.entries(c.outcomes).filter(([, v]) => v !== 0));
      Object.assign(o, { rx: c.rx, tx: c.tx, txDropped: c.txDropped, replies: c.replies, rxErrors: c.rxErrors, up: c.up ? 1 : 0, attaches: c.attaches });
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
    void controller.reload().then((ok) => process.stdout.write(`${JSON.stringify({ reloaded: ok })}\n`));
  });
  process.on('SIGUSR1', () => { flowLog?.reopen(); log.info('flow log reopened'); });
  const stop = (signal: string) => {
    log.info({ signal }, 'stopping');
    controller.stop();
    store.close();
    api?.close();
    flowLog?.stop();
    dp.stop();
    process.stdout.write(`${JSON.stringify({ stopped: true, stats: stats() })}\n`);
    process.exit(0);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
