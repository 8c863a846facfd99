/**
 * `tapwall run`: the daemon. Loads and compiles the policy, opens a port per
 * workload vNIC (and the uplink, if named), and runs the data plane on the
 * event loop until SIGTERM or SIGINT, with the controller (policy and tags
 * from the store, the config file watched), the API, the flow log and the
 * metrics beside it. SIGHUP re-reads the policy file: one that fails
 * validation is logged and the running policy stays in force. SIGUSR1 reopens
 * the flow log (for logrotate); SIGUSR2 prints counters.
 */
import { RuleAnalytics } from '../control/ruleAnalytics.js';
import { HISTORY_LIMIT, PolicyHistory } from '../control/history.js';
import pino from 'pino';
import { PerformanceObserver } from 'node:perf_hooks';
import { chownSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { native } from '../io/native.js';
import { dirname, join, resolve } from 'node:path';
import { policyLoad } from '../policy/load.js';
import { policyCompile } from '../policy/compile.js';
import { PolicyError, formatProblem } from '../policy/errors.js';
import { FileStore, type PolicyStore } from '../control/store.js';
import type { EtcdStore } from '../control/etcdStore.js';
import { startingPolicy } from '../policy/model.js';
import { othersYielding, placeNewThreads, placeThreads, scavengeAlone, yieldOthers } from '../util/placement.js';
import { ControlError, Controller } from '../control/controller.js';
import { OffThreadPreparer } from '../control/offThread.js';
import { ApiServer } from '../control/api.js';
import { FlowLogWriter } from '../control/flowLogWriter.js';
import { portCounts } from '../control/views.js';
import { Dataplane, type FlowRecord, type PortSpec } from '../datapath/dataplane.js';
import type { PortMode } from '../io/ports.js';
import { metricsRegistry, metricsServe } from '../metrics/metrics.js';

export interface RunOptions {
  /** The policy file (the single-host store); unset with `store`. */
  config?: string;
  /** etcd://HOST:PORT[,...]: the cluster store (needs `host`). */
  store?: string;
  /** This hypervisor's name in the cluster: its workloads are the ones whose `host` it is. */
  host?: string;
  etcdPrefix?: string;
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
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
  /** The file the flow table is kept in across restarts (default: defaultFlowState()); null: memory only. */
  flowState?: string | null;
  /** Unix socket for the API; null: none. */
  apiSocket: string | null;
  /** host:port for the API over TCP (needs apiTokenFile). */
  apiListen?: string;
  apiTokenFile?: string;
  /** Become this user (name, or UID[:GID]) once the ports are open, keeping only the capabilities vNICs need. */
  user?: string;
  /** TLS for the TCP API. */
  apiCert?: string;
  apiKey?: string;
  /** Validate and compile changes in a worker thread (off the forwarding thread). */
  compileThread?: boolean;
  /** Keep this CPU (auto: the last one allowed) for the forwarding thread, every other thread on the rest (util/placement.ts). */
  forwardingCpu?: number | 'auto';
  /** Flow log file; flowLogStdout also (or only) to stdout; rate per vNIC per second. */
  flowLog?: string;
  flowLogStdout?: boolean;
  flowLogRate: number;
  version: string;
}

/** A secret's file, refused (not used) when others than its owner may read it. */
function ownerOnly(file: string, what: string, code: string): void {
  const mode = statSync(file).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw Object.assign(new Error(`${file}: ${what} can be read by others (mode ${mode.toString(8).padStart(4, '0')}); make it readable by its owner only (chmod 600)`), { code });
  }
}

/** The API token, read before anything is opened. */
function apiToken(file: string | undefined): string | null {
  if (!file) return null;
  ownerOnly(file, 'the API token file', 'EAPITOKEN');
  const token = readFileSync(file, 'utf8').trim();
  if (token.length < 16) throw Object.assign(new Error(`${file}: the API token must be at least 16 characters`), { code: 'EAPITOKEN' });
  return token;
}

/** The folder of the default state (--state-dir), whose flow table goes to a tmpfs. */
export const DEFAULT_STATE_DIR = '/var/lib/tapwall';

/**
 * Where the flow table is kept by default: /run/tapwall/flows.table (a tmpfs:
 * a shared mapping of a file on disk is written back by the kernel, and every
 * first store into a page after that faults on the packet path) with the
 * default state folder, else inside the given state folder, so that daemons
 * with folders of their own never share a table.
 */
function defaultFlowState(stateDir: string): string {
  if (resolve(stateDir) !== DEFAULT_STATE_DIR) return join(stateDir, 'flows.table');
  try {
    mkdirSync('/run/tapwall', { recursive: true, mode: 0o755 });
    return '/run/tapwall/flows.table';
  } catch {
    return join(stateDir, 'flows.table'); // no /run/tapwall for this user: beside the state, on disk
  }
}

/** The TCP API's certificate and key, read before anything is opened; both or neither. */
function apiTls(cert: string | undefined, key: string | undefined): { cert: string; key: string } | null {
  if (!cert && !key) return null;
  if (!cert || !key) throw Object.assign(new Error('--api-cert and --api-key go together'), { code: 'EAPITLS' });
  ownerOnly(key, "the API's private key", 'EAPITLS');
  return { cert: readFileSync(cert, 'utf8'), key: readFileSync(key, 'utf8') };
}

/** `--user NAME` or `UID[:GID]` as numbers (NAME through the system's user database). */
function resolveUser(spec: string): { uid: number; gid: number } {
  if (process.getuid?.() !== 0) throw Object.assign(new Error('--user: tapwall must start as root to become another user'), { code: 'EUSAGE' });
  const numeric = /^(\d+)(?::(\d+))?$/.exec(spec);
  if (numeric) return { uid: Number(numeric[1]), gid: Number(numeric[2] ?? numeric[1]) };
  let entry = '';
  try {
    entry = execFileSync('getent', ['passwd', spec], { encoding: 'utf8' });
  } catch {
    throw Object.assign(new Error(`--user: no user named '${spec}'`), { code: 'EUSAGE' });
  }
  const f = entry.trim().split(':');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

/** The capabilities a mode needs after start: to open vNICs that the policy adds later. */
function capabilitiesFor(mode: PortMode): { numbers: number[]; names: string[] } {
  // CAP_NET_RAW (13): AF_PACKET sockets (attach, pcap, the uplink); CAP_NET_ADMIN (12): creating TAP devices.
  return mode === 'tap' ? { numbers: [12, 13], names: ['CAP_NET_ADMIN', 'CAP_NET_RAW'] } : { numbers: [13], names: ['CAP_NET_RAW'] };
}

/**
 * Become `user`: what it must write afterwards (the state folder and its
 * files, the flow table, the flow log) is handed to it first; then every
 * other capability goes, for good (native dropPrivileges).
 */
function dropPrivileges(user: { uid: number; gid: number }, mode: PortMode, paths: Array<string | null | undefined>): void {
  for (const p of paths) {
    if (!p || !existsSync(p)) continue;
    chownSync(p, user.uid, user.gid);
    if (statSync(p).isDirectory()) for (const f of readdirSync(p)) chownSync(join(p, f), user.uid, user.gid);
  }
  native().dropPrivileges(user.uid, user.gid, capabilitiesFor(mode).numbers);
}

/** HOST of HOST:PORT is a loopback address (or names one). */
function isLoopback(hostPort: string): boolean {
  const host = hostPort.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

export async function runDaemon(opts: RunOptions): Promise<void> {
  const log = pino({ name: 'tapwall' }, pino.destination(2));
  const token = apiToken(opts.apiTokenFile);
  const tls = apiTls(opts.apiCert, opts.apiKey);
  const user = opts.user ? resolveUser(opts.user) : null;
  // Plain HTTP off loopback: say so, once, at start.
  if (opts.apiListen && !tls && !isLoopback(opts.apiListen)) log.warn({ listen: opts.apiListen }, 'the API listens beyond loopback over plain HTTP: the bearer token and every request cross the network unencrypted (give it --api-cert and --api-key, or keep it on loopback)');
  if (opts.metrics && !/^(.*):(\d+)$/.test(opts.metrics)) throw Object.assign(new Error(`--metrics: expected HOST:PORT, like 127.0.0.1:9810, found '${opts.metrics}'`), { code: 'EMETRICS' });
  if (opts.metrics && !isLoopback(opts.metrics)) log.warn({ metrics: opts.metrics }, 'metrics are served beyond loopback over plain HTTP (they name workloads and rules)');
  mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
  // The store holds the policy and the dynamic tags: the --config file, or etcd shared by many hosts.
  let store: PolicyStore;
  let etcd: EtcdStore | null = null;
  if (opts.store) {
    if (!opts.host) throw Object.assign(new Error('--store etcd://... needs --host NAME: the hypervisor whose workloads this daemon serves'), { code: 'EHOST' });
    // Loaded only for a cluster: the etcd client (gRPC) takes a third of a second to load, and a restart waits for it.
    const { EtcdStore } = await import('../control/etcdStore.js');
    etcd = new EtcdStore({ url: opts.store, prefix: opts.etcdPrefix, ca: opts.etcdCa, cert: opts.etcdCert, key: opts.etcdKey });
    etcd.onConnection = (up, why) => (up ? log.info({ why }, 'store connected') : log.warn({ why }, 'store unreachable: the last policy stays in force'));
    try {
      await etcd.open();
    } catch (e) {
      etcd.close();
      throw Object.assign(new Error(`cannot read the policy from ${opts.store}: ${(e as Error).message}`), { code: 'ESTORE' });
    }
    store = etcd;
  } else {
    if (!opts.config) throw Object.assign(new Error('tapwall run needs --config FILE or --store etcd://...'), { code: 'ECONFIG' });
    const { warnings } = policyLoad(opts.config, { shadows: false });
    for (const w of warnings) log.warn({ problem: w }, formatProblem(w));
    store = new FileStore(opts.config, join(opts.stateDir, 'tags.json'));
  }
  // The data plane starts with the uplink only; the controller's first apply opens the vNICs the policy gives this host.
  const specs: PortSpec[] = opts.uplink ? [{ name: opts.uplink, mode: opts.mode === 'pcap' ? 'pcap' : 'attach', workload: null }] : [];
  const errorsLogged = new Map<string, number>();
  const analytics = new RuleAnalytics(opts.stateDir, (message) => log.warn({ rules: true }, message));
  for (const problem of analytics.problems) log.warn({ rules: true }, problem);
  const dp = new Dataplane(policyCompile(startingPolicy()), specs, {
    vnicMode: opts.mode,
    loose: opts.loose,
    flowCapacity: opts.flowCapacity,
    flowState: opts.flowState === null ? undefined : opts.flowState ?? defaultFlowState(opts.stateDir),
    perPortQuota: opts.quota,
    // Offload unless told otherwise (QEMU turns virtio-net headers on by default too); libpcap cannot carry the headers.
    tap: { persist: opts.tapPersist, ownerUid: opts.tapOwner, offload: opts.offload ?? opts.mode !== 'pcap' },
    flowLog: opts.flowLog || opts.flowLogStdout ? { rate: opts.flowLogRate, burst: Math.max(1, opts.flowLogRate * 2) } : undefined,
    onError: (port, message) => {
      // At most one log line per port per 10 s; the counters keep the full count.
      const now = Date.now();
      if ((errorsLogged.get(port) ?? 0) + 10_000 > now) return;
      errorsLogged.set(port, now);
      log.error({ port }, message);
    },
    onInfo: (port, message) => log.info({ port }, message),
    onRulesRetired: (counts) => analytics.retired(counts),
    // Live migration: a workload that moves to another host takes its open connections along, through etcd.
    onDetach: (workload, flows, next) => {
      const to = next.policy.workloads.get(workload)?.host;
      if (!etcd || !to || to === opts.host || flows.length === 0) return;
      void etcd.putFlows(workload, JSON.stringify({ from: opts.host, to, at: new Date().toISOString(), flows }))
        .then(() => log.info({ workload, to, connections: flows.length }, 'connections handed over to the new host'))
        .catch((e: Error) => log.error({ workload, to }, `could not hand the connections over: ${e.message}`));
    },
    onAttach: (workload) => takeOverFlows(workload),
  });
  /** Connections handed over for a workload that now runs here: taken once, then the key is removed. */
  const takeOverFlows = (workload: string, value: string | null = etcd?.flowsOf(workload) ?? null): void => {
    if (!etcd || value === null) return;
    let handed: { to?: string; flows?: FlowRecord[] };
    try {
      handed = JSON.parse(value) as typeof handed;
    } catch {
      log.warn({ workload }, 'handed-over connections are not JSON: ignored');
      return;
    }
    if (handed.to !== opts.host || !Array.isArray(handed.flows)) return;
    if (!dp.ports.some((p) => !p.retired && p.spec.workload === workload)) return; // not attached here yet: onAttach takes them
    const taken = dp.importPortFlows(workload, handed.flows);
    log.info({ workload, connections: taken, of: handed.flows.length }, 'connections taken over from the old host');
    void etcd.deleteFlows(workload).catch(() => undefined);
  };
  if (etcd) etcd.flowListener = (workload, value) => takeOverFlows(workload, value);
  // Validation and compilation in a worker thread at a lower CPU priority: forwarding never waits for
  // them (--no-compile-thread: on this thread, between batches).
  // Before the compiling thread starts: it is born on this thread's CPU and moves off it at once.
  let placedHere = false;
  // Either way: a young-generation collection never waits for a helper thread (util/placement.ts).
  scavengeAlone();
  if (opts.forwardingCpu !== undefined) {
    const placed = placeThreads(opts.forwardingCpu);
    if (placed.placement) {
      placedHere = true;
      log.info({ forwardingCpu: placed.placement.forwarding, otherCpus: placed.placement.others, threadsMoved: placed.placement.moved }, 'the forwarding thread has a CPU to itself');
      // Threads made later (libuv, V8) are born here too: moved on the next sweep.
      setInterval(placeNewThreads, 5000).unref();
    } else log.warn({ forwardingCpu: opts.forwardingCpu }, `threads not placed: ${placed.reason}`);
  }
  if (!placedHere) {
    // Sharing CPUs with them: every other thread of ours (V8's helpers, libuv's pool) at a lower
    // priority, and those made later on the next sweep (util/placement.ts).
    const lowered = yieldOthers();
    log.info({ threads: lowered, nice: othersYielding()?.nice }, "the forwarding thread goes first: tapwall's other threads at a lower priority");
    setInterval(yieldOthers, 5000).unref();
  }
  const history = new PolicyHistory(opts.stateDir, HISTORY_LIMIT, (message) => log.warn({ history: true }, message));
  for (const problem of history.problems) log.warn({ history: true }, problem);
  const controller = new Controller(store, dp, {
    log, auditPath: join(opts.stateDir, 'audit.jsonl'), host: opts.host ?? null, preparer: opts.compileThread ? new OffThreadPreparer() : undefined, history,
    onApplied: (rec, vnics) => etcd?.updateHost({ enforcing: rec.revision, generation: rec.generation, vnics, appliedAt: rec.at }),
  });
  if (etcd) controller.storeName = 'etcd';
  try {
    await controller.start();
  } catch (e) {
    await controller.close();
    dp.stop();
    store.close();
    if (e instanceof ControlError) throw new PolicyError(e.problems);
    throw e;
  }
  analytics.start(dp);
  // Connections the previous process had open: taken up before the first frame is forwarded.
  for (const problem of dp.flowStateProblems) log.warn({ flowState: true }, problem);
  const resumed = dp.resumeFlows();
  if (resumed.from !== null) log.info({ connections: resumed.resumed, leftBehind: resumed.left, previousPid: resumed.from }, 'connections resumed from the previous process');
  if (etcd) {
    await etcd.registerHost(opts.host!, {
      vnics: dp.nics, enforcing: controller.revision.policy, generation: controller.generation,
      since: new Date().toISOString(), pid: process.pid, version: opts.version,
    });
  }
  let api: ApiServer | null = null;
  if (opts.apiSocket || opts.apiListen) {
    if (opts.apiSocket) mkdirSync(dirname(opts.apiSocket), { recursive: true, mode: 0o755 });
    api = new ApiServer(controller, dp, { version: opts.version, socketPath: opts.apiSocket, listen: opts.apiListen ?? null, token, tls, store: etcd, host: opts.host ?? null, analytics });
    await api.start();
  }
  const flowLog = dp.ct.flowLog ? new FlowLogWriter(dp, dp.ct.flowLog, opts.flowLog ?? null, opts.flowLogStdout ?? false, (message) => log.error(message)) : null;
  flowLog?.start();
  dp.start();
  let metricsUrl: string | null = null;
  if (opts.metrics) {
    const m = /^(.*):(\d+)$/.exec(opts.metrics) as RegExpExecArray; // checked at start
    const host = m[1].replace(/^\[|\]$/g, '');
    const { port } = await metricsServe(metricsRegistry(dp, controller, etcd, analytics), host, Number(m[2]));
    metricsUrl = `http://${host.includes(':') ? `[${host}]` : host}:${port}/metrics`;
  }
  // Everything privileged is open now: become the given user, keeping only what opening a vNIC later needs.
  if (user) {
    dropPrivileges(user, opts.mode, [opts.stateDir, join(opts.stateDir, 'history'), join(opts.stateDir, 'rules.json'), dp.flowState?.path, opts.flowLog]);
    log.info({ uid: user.uid, gid: user.gid, capabilities: capabilitiesFor(opts.mode).names }, 'running as an unprivileged user');
  }
  const ports = dp.ports.map((p) => ({ name: p.io.name, mode: p.io.mode, workload: dp.workloadOf(p.index) }));
  const apiAddr = api ? api.addresses : null;
  log.info({ ports, rules: controller.policy.stats.rules, metrics: metricsUrl, api: apiAddr, host: opts.host ?? null }, 'tapwall running');
  // One machine-readable line on stdout for supervisors and tests.
  process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid, ports, metrics: metricsUrl, api: apiAddr, host: opts.host ?? null, revision: controller.revision.policy })}\n`);

  // Garbage collections since start: the per-packet path allocates nothing, and this shows it.
  let gcCount = 0;
  new PerformanceObserver((list) => { gcCount += list.getEntries().length; }).observe({ entryTypes: ['gc'] });

  const stats = () => {
    const out: Record<string, Record<string, number>> = {};
    dp.ports.forEach((p, i) => {
      const c = portCounts(dp, i);
      // Outcomes that happened, then the port's own counters, flat.
      const o: Record<string, number> = Object.fromEntries(Object.entries(c.outcomes).filter(([, v]) => v !== 0));
      Object.assign(o, {
        rx: c.rx, tx: c.tx, txDropped: c.txDropped, replies: c.replies, rxErrors: c.rxErrors, up: c.up ? 1 : 0, attaches: c.attaches,
        txQueueFull: c.txQueueFull, repliesLimited: c.repliesLimited, groupRefused: c.groupRefused, backendDropped: c.backendDropped,
      });
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
    void controller.close();
    api?.close();
    flowLog?.stop();
    analytics.stop();
    dp.stop();
    process.stdout.write(`${JSON.stringify({ stopped: true, stats: stats() })}\n`);
    // A cluster store revokes this host's registration first (a few seconds at most), so it shows as gone at once.
    void Promise.resolve(store.close()).finally(() => process.exit(0));
  };
  // The etcd client library throws from its stream handlers on some races (an answer for a watch it
  // no longer knows). That must not stop the firewall: log it, and give the store a new client.
  process.on('uncaughtException', (e) => {
    if (etcd && /etcd3|grpc/.test(e.stack ?? '')) {
      log.error({ err: e.message }, 'the etcd client failed inside; starting it over (the policy in force stays)');
      etcd.recover(e.message);
      return;
    }
    log.fatal({ err: e.stack }, 'internal error');
    process.exit(1);
  });
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
