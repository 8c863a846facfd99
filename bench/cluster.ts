/**
 * `tapwall bench cluster`: many hosts, one policy, on a real three-member etcd.
 *
 * Set-up: etcd members on loopback (bench/etcd.ts); a policy of R rules over
 * W workloads spread over the hosts (tag groups of ten workloads; rules from
 * group to group), written once; then N host processes (`node
 * dist/bench/cluster.js host ...`), each running the real sync and compile
 * path (EtcdStore + Controller, the policy decider as its data plane, its
 * own workloads' points only). Measured, for N = 10, 50, 100 (or --hosts):
 *   - a new host: from its start to enforcing the policy (read + validate + compile);
 *   - a quarantine tag written to etcd: from the write's start to each host
 *     enforcing it (hosts report when they applied that tags revision; one
 *     clock, one machine), p50/p99/max over every host and change; split in
 *     etcd's part (from the write's start until the host's watch delivers
 *     the change: the commit, which waits for the members' disks, and the
 *     delivery) and the host's (from that delivery until it is enforced);
 *   - bytes etcd sent per tag change per host (etcd's own gRPC sent-bytes
 *     counter, before and after the changes);
 *   - memory per host process (RSS).
 * All hosts share this machine's cores: with two cores, 100 hosts that each
 * compile a change queue behind each other, which a real cluster (a host
 * per hypervisor) does not. The report prints the machine.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { EtcdCluster } from './etcd.js';
import { machineInfo, machineLine, type MachineInfo } from './machine.js';
import { EtcdStore } from '../src/control/etcdStore.js';
import { Controller, type PolicyTarget } from '../src/control/controller.js';
import { PolicyDecider } from '../src/datapath/decide.js';
import { policyCompile } from '../src/policy/compile.js';
import { startingPolicy, type Policy } from '../src/policy/model.js';
import type { DynamicTag } from '../src/control/store.js';

export interface ClusterBenchOptions { hosts: number[]; rules: number; workloads: number; changes: number }

export interface ClusterRound {
  hosts: number;
  syncMs: { p50: number; max: number };
  quarantineMs: { p50: number; p99: number; max: number };
  /** etcd's part of it: from the write's start until a host's watch delivered the change. */
  deliveredMs: { p50: number; p99: number; max: number };
  /** The host's part: from its watch's delivery until the change is enforced there. */
  hostMs: { p50: number; p99: number; max: number };
  /**
   * The first change after the hosts started, apart (the percentiles above leave it out): every host runs
   * the code of a tag change for the first time, unoptimised, and on this machine all of them at once.
   */
  firstChangeMs: { p50: number; max: number };
  bytesPerChangePerHost: number;
  rssMbPerHost: number;
}

export interface ClusterBenchResult { machine: MachineInfo; rules: number; workloads: number; changes: number; rounds: ClusterRound[] }

/** The benchmark's policy document: W workloads over `hosts` hosts, groups of ten, R rules, a quarantine section. */
export function clusterDocument(hosts: number, workloads: number, rules: number): Record<string, unknown> {
  const groups = Math.max(1, Math.floor(workloads / 10));
  const w: Record<string, unknown> = {};
  for (let i = 0; i < workloads; i++) {
    const hex = (n: number) => n.toString(16).padStart(2, '0');
    w[`w${i}`] = { nic: `twc${i}`, mac: `02:cc:${hex((i >> 16) & 255)}:${hex((i >> 8) & 255)}:${hex(i & 255)}:01`, ips: [`10.${100 + ((i >> 16) & 63)}.${(i >> 8) & 255}.${i & 255}`], tags: [`g${i % groups}`], host: `h${i % hosts}` };
  }
  const g: Record<string, unknown> = { quarantined: { tags: ['quarantine'] } };
  for (let i = 0; i < groups; i++) g[`g${i}`] = { tags: [`g${i}`] };
  const rs = [];
  for (let r = 0; r < rules; r++) rs.push({ id: `r${r}`, from: `g${r % groups}`, to: `g${(r * 7 + 3) % groups}`, services: [`tcp/${1000 + (r % 5000)}`], action: r % 10 === 0 ? 'drop' : 'allow' });
  return {
    default: 'drop', workloads: w, groups: g,
    sections: [
      { name: 'emergency', rules: [{ id: 'q-out', from: 'quarantined', to: 'any', action: 'drop' }, { id: 'q-in', from: 'any', to: 'quarantined', action: 'drop' }] },
      { name: 'app', rules: rs },
    ],
  };
}

const EMPTY: Policy = { ...startingPolicy(), source: '(empty)' };

/** One host process: sync, enforce, and report each tags revision it applies (stdout lines). */
export async function clusterHost(url: string, host: string, prefix: string): Promise<void> {
  const started = performance.timeOrigin + performance.now();
  const decider = new PolicyDecider(policyCompile(EMPTY), []);
  const target: PolicyTarget = { setPolicy: (c) => decider.setPolicy(c) };
  const store = new EtcdStore({ url, prefix });
  await store.open();
  // When the watch delivered each tags revision (listed before the controller's listener, so first to hear it).
  const delivered = new Map<number, number>();
  store.watch((key, state) => { if (key === 'tags' && !delivered.has(state.tags.revision)) delivered.set(state.tags.revision, performance.timeOrigin + performance.now()); });
  const controller = new Controller(store, target, {
    host,
    onApplied: () => {
      const revision = controller.revision.tags;
      process.stdout.write(`applied ${revision} ${performance.timeOrigin + performance.now()} ${delivered.get(revision) ?? NaN}\n`);
      delivered.delete(revision);
    },
  });
  await controller.start();
  process.stdout.write(`ready ${performance.timeOrigin + performance.now() - started} ${process.memoryUsage().rss}\n`);
  process.on('SIGTERM', () => { void store.close().finally(() => process.exit(0)); });
}

const pct = (xs: number[], q: number) => { const s = [...xs].sort((a, b) => a - b); return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))]; };

async function etcdSentBytes(cluster: EtcdCluster): Promise<number> {
  let total = 0;
  for (const m of cluster.members) {
    if (m.proc === null) continue;
    const text = await (await fetch(`http://127.0.0.1:${m.client}/metrics`)).text();
    for (const line of text.split('\n')) if (line.startsWith('etcd_network_client_grpc_sent_bytes_total')) total += Number(line.split(' ').at(-1));
  }
  return total;
}

export async function benchCluster(opts: ClusterBenchOptions, log: (line: string) => void = () => undefined): Promise<ClusterBenchResult> {
  const etcd = new EtcdCluster(3);
  await etcd.start();
  const rounds: ClusterRound[] = [];
  const script = fileURLToPath(import.meta.url);
  try {
    for (const n of opts.hosts) {
      const writer = new EtcdStore({ url: etcd.url, prefix: `/bench${n}` });
      await writer.open();
      await writer.putPolicy(JSON.stringify(clusterDocument(n, opts.workloads, opts.rules)), null);
      const procs: Array<{ p: ChildProcess; applied: Map<number, number>; delivered: Map<number, number>; ready: Promise<{ ms: number; rss: number }> }> = [];
      for (let h = 0; h < n; h++) {
        const p = spawn(process.execPath, ['--max-old-space-size=512', script, 'host', etcd.url, `h${h}`, `/bench${n}`], { stdio: ['ignore', 'pipe', 'inherit'] });
        const applied = new Map<number, number>(), delivered = new Map<number, number>();
        const ready = new Promise<{ ms: number; rss: number }>((resolve, reject) => {
          const rl = createInterface({ input: p.stdout! });
          rl.on('line', (line) => {
            const [what, a, b, c] = line.split(' ');
            if (what === 'ready') resolve({ ms: Number(a), rss: Number(b) });
            else if (what === 'applied') { applied.set(Number(a), Number(b)); delivered.set(Number(a), Number(c)); }
          });
          p.once('exit', (code) => reject(new Error(`host h${h} exited (${code}) before it was ready`)));
        });
        procs.push({ p, applied, delivered, ready });
      }
      const ready = await Promise.all(procs.map((x) => x.ready));
      log(`${n} hosts synced: p50 ${pct(ready.map((r) => r.ms), 0.5).toFixed(0)} ms, max ${Math.max(...ready.map((r) => r.ms)).toFixed(0)} ms`);
      const bytesBefore = await etcdSentBytes(etcd);
      const latencies: number[] = [], deliveries: number[] = [], hostParts: number[] = [], first: number[] = [];
      for (let c = 0; c < opts.changes; c++) {
        const state = await writer.read();
        const w = `w${(c * 37) % opts.workloads}`;
        const tag: DynamicTag = { tag: 'quarantine', reason: 'bench', by: 'bench', added: new Date().toISOString(), expiresAt: null };
        const next = c % 2 === 0 ? { ...state.tags.value, [w]: [tag] } : {};
        const t0 = performance.timeOrigin + performance.now();
        const r = await writer.putTags(next, state.tags.revision);
        const deadline = Date.now() + 30_000;
        while (procs.some((x) => !x.applied.has(r.revision)) && Date.now() < deadline) await new Promise((x) => setTimeout(x, 2));
        for (const x of procs) {
          const at = x.applied.get(r.revision), from = x.delivered.get(r.revision);
          if (at === undefined) continue;
          if (c === 0) { first.push(at - t0); continue; }
          latencies.push(at - t0);
          // A revision the host applied without its watch naming it (a resync) has no delivery time.
          if (from !== undefined && !Number.isNaN(from)) { deliveries.push(from - t0); hostParts.push(at - from); }
        }
      }
      const bytesAfter = await etcdSentBytes(etcd);
      const round: ClusterRound = {
        hosts: n,
        syncMs: { p50: pct(ready.map((r) => r.ms), 0.5), max: Math.max(...ready.map((r) => r.ms)) },
        quarantineMs: { p50: pct(latencies, 0.5), p99: pct(latencies, 0.99), max: Math.max(...latencies) },
        deliveredMs: { p50: pct(deliveries, 0.5), p99: pct(deliveries, 0.99), max: Math.max(...deliveries) },
        hostMs: { p50: pct(hostParts, 0.5), p99: pct(hostParts, 0.99), max: Math.max(...hostParts) },
        firstChangeMs: { p50: pct(first, 0.5), max: Math.max(...first) },
        bytesPerChangePerHost: (bytesAfter - bytesBefore) / opts.changes / n,
        rssMbPerHost: ready.reduce((a, r) => a + r.rss, 0) / ready.length / 1e6,
      };
      log(`${n} hosts: quarantine p50 ${round.quarantineMs.p50.toFixed(1)} ms, p99 ${round.quarantineMs.p99.toFixed(1)} ms; ${round.bytesPerChangePerHost.toFixed(0)} bytes per change per host`);
      rounds.push(round);
      for (const x of procs) x.p.kill('SIGTERM');
      await Promise.all(procs.map((x) => new Promise((r) => (x.p.exitCode !== null ? r(null) : x.p.once('exit', r)))));
      await writer.close();
    }
  } finally {
    await etcd.stop();
  }
  return { machine: machineInfo(), rules: opts.rules, workloads: opts.workloads, changes: opts.changes, rounds };
}

export function formatCluster(r: ClusterBenchResult): string {
  const lines = [
    `tapwall bench cluster: ${r.rules} rules, ${r.workloads} workloads, ${r.changes} quarantine changes per size; a three-member etcd on loopback`,
    machineLine(r.machine),
    'HOSTS  SYNC p50/max (ms)  FIRST CHANGE p50/max  QUARANTINE p50/p99/max (ms)  ETCD: WRITE TO DELIVERED  HOST: DELIVERED TO ENFORCED  ETCD BYTES/CHANGE/HOST  RSS/HOST (MB)',
  ];
  const three = (x: { p50: number; p99: number; max: number }) => `${x.p50.toFixed(1)}/${x.p99.toFixed(1)}/${x.max.toFixed(1)}`;
  for (const x of r.rounds) {
    lines.push(`${String(x.hosts).padEnd(6)} ${`${x.syncMs.p50.toFixed(0)}/${x.syncMs.max.toFixed(0)}`.padEnd(18)} ${`${x.firstChangeMs.p50.toFixed(1)}/${x.firstChangeMs.max.toFixed(1)}`.padEnd(21)} ${three(x.quarantineMs).padEnd(28)} ${three(x.deliveredMs).padEnd(25)} ${three(x.hostMs).padEnd(28)} ${x.bytesPerChangePerHost.toFixed(0).padEnd(23)} ${x.rssMbPerHost.toFixed(0)}`);
  }
  lines.push('Every host runs on this machine\'s cores: a change is compiled by all of them at once, so latency grows with the host count here, not in a cluster with a host per hypervisor.');
  lines.push('The first change after the hosts start is apart: each host runs a tag change\'s code for the first time (the percentiles are over the others).');
  return lines.join('\n');
}

// Run as a host process: `node dist/bench/cluster.js host URL NAME PREFIX`.
if (process.argv[2] === 'host' && process.argv[1] === fileURLToPath(import.meta.url)) {
  const [, , , url, name, prefix] = process.argv;
  clusterHost(url, name, prefix).catch((e: Error) => { process.stderr.write(`host ${name}: ${e.message}\n`); process.exit(1); });
}
