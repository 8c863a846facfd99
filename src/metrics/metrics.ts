/**
 * Prometheus metrics (prom-client), read from the data plane's typed-array
 * counters at scrape time: the hot path never calls prom-client. Each metric's
 * collect() copies the current values in; counters are monotonic because the
 * arrays they mirror only grow.
 *
 * Labels are bounded by configuration, never by traffic: port (one per vNIC
 * and the uplink), workload, outcome (a fixed enum), event (a fixed enum).
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { Dataplane, PC, PC_COUNT } from '../datapath/dataplane.js';
import { STAGE_NAMES } from '../datapath/switch.js';
import { OUTCOME_COUNT, OUTCOME_NAMES } from '../packet/verdict.js';
import { FLOW_COUNTER_NAMES } from '../flow/flowTable.js';
import { CTC, SK_COUNT, SK_NAMES } from '../flow/conntrack.js';
import type { Controller } from '../control/controller.js';
import type { RuleAnalytics } from '../control/ruleAnalytics.js';
import { promHistogram } from './histogram.js';
import { escapeLabel, RuleSeriesWriter } from './ruleSeries.js';
import { slicedAll, writeSliced, type SlicedText } from '../util/sliced.js';

/** What the metrics read of a cluster store (control/etcdStore.ts). */
export interface StoreHealth {
  connected: boolean;
  syncedAt: number | null;
  watchRestarts: number;
  compactions: number;
}

/**
 * The registry, whose text ends with the per-rule families (ruleSeries.ts):
 * labelled by section and rule id from the policy (bounded by its size),
 * never by packet fields, and written without prom-client's per-series work.
 */
class TapwallRegistry extends Registry {
  constructor(private readonly dp: Dataplane, private readonly analytics: RuleAnalytics | null) {
    super();
  }

  /** The registry's families as text, and a writer of the per-port outcomes and per-rule families (the server writes them a slice per turn). */
  async scrape(): Promise<[string, SlicedText]> {
    // One family per turn of the event loop (prom-client's labelled families cost up to a few milliseconds
    // each), formatted and joined as its registry does (its per-family formatter, which its typings leave
    // out; without it, all at once).
    const own = this as unknown as { getMetricsAsString?: (m: unknown) => Promise<string> };
    let head: string;
    if (typeof own.getMetricsAsString !== 'function') head = await super.metrics();
    else {
      const families: string[] = [];
      for (const m of this.getMetricsAsArray()) {
        families.push(await own.getMetricsAsString(m));
        await new Promise((resolve) => setImmediate(resolve));
      }
      head = `${families.join('\n\n')}\n`;
    }
    const { dp } = this;
    const rules = dp.compiled.rules;
    const ports = new PortFramesWriter(dp);
    const perRule = new RuleSeriesWriter({
      rules, stats: dp.ct.ruleStats, defaultAction: dp.compiled.defaultAction,
      clockOffset: Date.now() - performance.now(), lastHitBefore: this.analytics ? (r) => this.analytics!.lastHitOf(r.section, r.id) : null,
    });
    return [`${head}\n`, { next: () => ports.next() ?? perRule.next() }];
  }

  override async metrics(): Promise<string> {
    const [head, rest] = await this.scrape();
    return head + slicedAll(rest);
  }
}


/** Ports per slice of tapwall_port_frames_total: 70 ports are about 1,000 series. */
const PORT_SLICE = 70;

/**
 * tapwall_port_frames_total (port x outcome) written as the per-rule
 * families are, a slice of ports per turn: through prom-client, 2,800
 * series at 200 vNICs took one turn of 24-33 ms (4-13 ms at 50). The text
 * is prom-client's for the same series (a test compares them).
 */
class PortFramesWriter {
  private readonly live: number[];
  private i = -1;

  constructor(private readonly dp: Dataplane) {
    this.live = [];
    dp.ports.forEach((p, i) => { if (!p.retired) this.live.push(i); });
  }

  next(): string | null {
    const name = 'tapwall_port_frames_total';
    if (this.i < 0) {
      this.i = 0;
      return `# HELP ${name} Frames received on the port, by the one outcome each ended in (forward, or a drop reason). Their sum is tapwall_port_received_packets_total.\n# TYPE ${name} counter\n`;
    }
    if (this.i >= this.live.length) return null;
    let out = '';
    const end = Math.min(this.live.length, this.i + PORT_SLICE);
    for (; this.i < end; this.i++) {
      const p = this.live[this.i];
      const labels = `${name}{port="${escapeLabel(this.dp.ports[p].io.name)}",workload="${escapeLabel(this.dp.workloadOf(p) ?? 'uplink')}",outcome="`;
      for (let o = 0; o < OUTCOME_COUNT; o++) out += `${labels}${OUTCOME_NAMES[o]}"} ${this.dp.outcomes[p * OUTCOME_COUNT + o]}\n`;
    }
    return out;
  }
}

export function metricsRegistry(dp: Dataplane, controller: Controller | null = null, store: StoreHealth | null = null, analytics: RuleAnalytics | null = null): Registry {
  const registry = new TapwallRegistry(dp, analytics);
  collectDefaultMetrics({ register: registry });
  const portLabels = (i: number) => ({ port: dp.ports[i].io.name, workload: dp.workloadOf(i) ?? 'uplink' });
  // Ports whose vNIC left this host are not reported (their series end; a slot reused starts from zero).
  const live = (each: (i: number) => void) => dp.ports.forEach((p, i) => { if (!p.retired) each(i); });

  /** A counter per live port, read from the data plane at scrape time: one of its PC counters, or another per-port value. */
  const portCounter = (name: string, help: string, pc: PC | ((i: number) => number)) => new Counter({
    name, help, labelNames: ['port', 'workload'], registers: [registry],
    collect() {
      this.reset();
      live((i) => this.inc(portLabels(i), typeof pc === 'function' ? pc(i) : dp.portCounters[i * PC_COUNT + pc]));
    },
  });
  portCounter('tapwall_port_received_packets_total', 'Frames received on the port.', PC.rxPackets);
  portCounter('tapwall_port_received_bytes_total', 'Bytes received on the port.', PC.rxBytes);
  portCounter('tapwall_port_transmitted_packets_total', 'Frames sent out of the port.', PC.txPackets);
  portCounter('tapwall_port_transmitted_bytes_total', 'Bytes sent out of the port.', PC.txBytes);
  portCounter('tapwall_port_transmit_dropped_total', 'Frames for the port that the kernel did not take (full queue, port down).', PC.txDropped);
  portCounter('tapwall_port_receive_errors_total', 'Read or poll failures on the port (the interface went away).', PC.rxErrors);
  portCounter('tapwall_port_reject_replies_total', 'TCP resets and ICMP errors sent for rejected or cut packets.', PC.replies);
  portCounter('tapwall_port_transmit_queue_full_total', 'Frames for the port dropped because its transmit queue was full.', PC.txQueueFull);
  portCounter('tapwall_port_reject_replies_limited_total', 'Resets and ICMP errors not sent because the port\'s reply rate limit was reached.', PC.repliesLimited);
  portCounter('tapwall_port_group_refused_total',
    'Multicast and broadcast packets another port sent that this port\'s ingress policy refused (the other receivers may have taken them).',
    (i) => dp.sw.groupRefused[i]);
  portCounter('tapwall_port_backend_dropped_total',
    'Frames the port\'s backend dropped before tapwall read them (libpcap: its pending queue full or a frame cut short; AF_PACKET: the kernel\'s ring full).',
    (i) => dp.backendDropped(i));
  if (dp.ct.flowLog) {
    const fl = dp.ct.flowLog;
    new Counter({
      name: 'tapwall_flow_log_events_total',
      help: 'Flow log events per port: written to the log, or suppressed by its per-vNIC rate limit or a full ring (reported as "suppressed" lines).',
      labelNames: ['port', 'workload', 'result'], registers: [registry],
      collect() {
        this.reset();
        live((i) => {
          this.inc({ ...portLabels(i), result: 'written' }, fl.written[i]);
          this.inc({ ...portLabels(i), result: 'suppressed' }, fl.suppressed[i]);
        });
      },
    });
  }
  portCounter('tapwall_port_attaches_total', 'Times the port was attached again after its interface appeared or came back (a guest started or restarted).', PC.attaches);

  new Counter({
    name: 'tapwall_stage_frames_total',
    help: 'Frames each stage of the decision path took in (result="in") and dropped (result="dropped"); the rest went on. Stages in order: parse (its in is every frame read), link, steering, then one of resolution, ip, ether.',
    labelNames: ['stage', 'result'], registers: [registry],
    collect() {
      this.reset();
      const c = dp.sw.stageCounts;
      STAGE_NAMES.forEach((stage, k) => {
        this.inc({ stage, result: 'in' }, c[k * 2]);
        this.inc({ stage, result: 'dropped' }, c[k * 2 + 1]);
      });
    },
  });
  new Gauge({
    name: 'tapwall_port_up', help: '1 while the port is open and readable, 0 once it failed.', labelNames: ['port', 'workload'], registers: [registry],
    collect() { live((i) => this.set(portLabels(i), dp.ports[i].up ? 1 : 0)); },
  });
  new Gauge({
    name: 'tapwall_flow_entries', help: 'Connections in the flow table.', registers: [registry],
    collect() { this.set(dp.table.live); },
  });
  new Gauge({
    name: 'tapwall_flow_capacity', help: 'Most connections the flow table holds.', registers: [registry],
    collect() { this.set(dp.table.capacity); },
  });
  new Gauge({
    name: 'tapwall_flow_port_entries', help: 'Connections charged to the port (against its quota).', labelNames: ['port', 'workload'], registers: [registry],
    collect() { live((i) => this.set(portLabels(i), dp.table.ownerCount[i])); },
  });
  new Counter({
    name: 'tapwall_conntrack_events_total',
    help: 'Connection tracking: packets that found their connection (hit) or none (miss), ICMP errors related to a connection, stale entries checked again after a policy change (revalidated) and those it then cut, stateless decisions.',
    labelNames: ['event'], registers: [registry],
    collect() {
      this.reset();
      const c = dp.ct.counters;
      this.inc({ event: 'hit' }, c[CTC.hits]);
      this.inc({ event: 'miss' }, c[CTC.misses]);
      this.inc({ event: 'related' }, c[CTC.related]);
      this.inc({ event: 'revalidated' }, c[CTC.revalidated]);
      this.inc({ event: 'cut' }, c[CTC.cut]);
      this.inc({ event: 'stateless' }, c[CTC.stateless]);
    },
  });
  new Gauge({
    name: 'tapwall_flow_port_quota', help: 'Most connections one port may hold.', registers: [registry],
    collect() { this.set(dp.table.quota); },
  });
  new Counter({
    name: 'tapwall_flow_events_total', help: 'Flow table events: inserts, removes, expiries, evictions and refusals by reason.', labelNames: ['event'], registers: [registry],
    collect() {
      this.reset();
      FLOW_COUNTER_NAMES.forEach((event, k) => this.inc({ event }, dp.table.counters[k]));
    },
  });
  new Gauge({
    name: 'tapwall_policy_rules', help: 'Rules in the policy in force.', registers: [registry],
    collect() { this.set(dp.compiled.stats.rules); },
  });
  new Gauge({
    name: 'tapwall_policy_compiled_bytes', help: 'Memory held by the compiled rule tries.', registers: [registry],
    collect() { this.set(dp.compiled.stats.bytes); },
  });
  new Gauge({
    name: 'tapwall_policy_generation', help: 'Policies applied since start (a change makes cached decisions stale).', registers: [registry],
    // The controller's count, the one `tapwall status` shows; without a controller, the tracker's epoch.
    collect() { this.set(controller ? controller.generation : dp.ct.generation); },
  });
  promHistogram(registry, 'tapwall_batch_frames', 'Frames per batch read from a port (every batch).', dp.batchSizes);
  promHistogram(registry, 'tapwall_batch_seconds', 'Time to process one batch: parse, SpoofGuard, conntrack, policy, transmit (one batch in 8 is timed).', dp.batchSeconds);
  new Counter({
    name: 'tapwall_staged_disagreements_total',
    help: 'New connections on which the staged policy (evaluated, never enforced) disagrees with the enforced one, by the staged rule that decided: would-deny (allowed now), would-allow (refused now), other-rule (same verdict, another rule). Starts again for each staged document.',
    labelNames: ['section', 'rule', 'kind'], registers: [registry],
    collect() {
      this.reset();
      const staged = dp.stagedPolicy;
      if (!staged) return;
      const st = dp.ct.stagedStats;
      for (let i = -1; i < staged.rules.length; i++) {
        const r = i >= 0 ? staged.rules[i] : null;
        SK_NAMES.forEach((kind, k) => {
          const v = st[(i + 1) * SK_COUNT + k] ?? 0;
          if (v > 0) this.inc({ section: r?.section ?? '', rule: r?.id ?? 'default', kind }, v);
        });
      }
    },
  });
  if (controller) {
    new Counter({
      name: 'tapwall_policy_apply_failures_total', help: 'Policy changes refused (invalid, or not compilable); the running policy stayed.', registers: [registry],
      collect() { this.reset(); this.inc(controller.applyFailures); },
    });
    new Gauge({
      name: 'tapwall_policy_last_apply_success_timestamp_seconds', help: 'When a policy or tag change was last applied.', registers: [registry],
      collect() { this.set((controller.lastSuccessAt ?? 0) / 1000); },
    });
    new Gauge({
      name: 'tapwall_policy_last_apply_failure_timestamp_seconds', help: 'When a policy change was last refused (0: never).', registers: [registry],
      collect() { this.set((controller.lastFailureAt ?? 0) / 1000); },
    });
    new Gauge({
      name: 'tapwall_policy_compile_seconds', help: 'How long the last applied policy took to compile.', registers: [registry],
      collect() { this.set((controller.lastApply?.compileMs ?? 0) / 1000); },
    });
    new Gauge({
      name: 'tapwall_store_revision', help: 'Store revision of the policy in force (etcd: its mod revision; a file: a counter).', registers: [registry],
      collect() { this.set(controller.revision.policy); },
    });
  }
  if (store) {
    new Gauge({
      name: 'tapwall_store_connected', help: '1 while the cluster store (etcd) is reachable and watched; 0: the last policy stays in force (fail-static).', registers: [registry],
      collect() { this.set(store.connected ? 1 : 0); },
    });
    new Gauge({
      name: 'tapwall_store_sync_age_seconds', help: 'Seconds since the store last gave a complete, current view.', registers: [registry],
      collect() { this.set(store.syncedAt === null ? -1 : (Date.now() - store.syncedAt) / 1000); },
    });
    new Counter({
      name: 'tapwall_store_watch_restarts_total', help: 'Times the store watch was started again with a full read (after a break, or a compacted revision).', registers: [registry],
      collect() { this.reset(); this.inc(store.watchRestarts); },
    });
    new Counter({
      name: 'tapwall_store_compactions_total', help: 'Watches that could not resume because their revision was compacted (each forced a full resync).', registers: [registry],
      collect() { this.reset(); this.inc(store.compactions); },
    });
  }
  return registry;
}

/** Serve the registry on http://host:port/metrics; resolves with the port it listens on. */
export function metricsServe(registry: Registry, host: string, port: number): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('try /metrics\n');
      return;
    }
    // The per-rule families go out a slice per turn of the event loop (one series per rule: at 100,000
    // rules tens of megabytes).
    const body: Promise<[string, SlicedText | null]> = registry instanceof TapwallRegistry ? registry.scrape() : registry.metrics().then((text) => [text, null]);
    body.then(
      ([head, rules]) => {
        res.writeHead(200, { 'content-type': registry.contentType });
        if (rules === null) { res.end(head); return; }
        res.write(head);
        void writeSliced(res, rules);
      },
      (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${e.message}\n`),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const addr = server.address();
      resolve({ server, port: typeof addr === 'object' && addr ? addr.port : port });
    });
  });
}
