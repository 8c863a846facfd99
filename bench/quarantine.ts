/**
 * `tapwall bench quarantine`: how fast a tag cuts an open connection.
 *
 * Set-up, in one process: a policy of N rules (default 10,000: the three-tier
 * sections with the quarantine section first, plus N - 9 rules allowing
 * external /32s to the web tier), 20 workloads, the controller with its HTTP
 * API on a Unix socket, the policy decider and connection tracker with
 * F established TCP connections (default 100,000) between web and app VMs.
 *
 * Each round: POST /v1/workloads/web-1/tags {add: [quarantine]} over the
 * socket; when the answer arrives, the next packet of an already-open web-1
 * connection goes through the tracker. Measured: the API call (validate,
 * compile, swap, answer), and the time from the call returning to that packet
 * being dropped (outcome `cut`). Then an open connection of web-2 must still
 * pass, and the tag is removed for the next round.
 * Baseline in the same run: a full reload of the same policy from its text
 * (what SIGHUP costs), so the ratio shows what the incremental path saves.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { frameBuild } from '../src/packet/build.js';
import { PKT, PKT_WORDS, TCP_ACK, TCP_SYN, parseFrame } from '../src/packet/parse.js';
import { Outcome } from '../src/packet/verdict.js';
import { policyParse } from '../src/policy/load.js';
import { policyCompile, type CompiledPolicy } from '../src/policy/compile.js';
import { PolicyDecider } from '../src/datapath/decide.js';
import { FlowTable } from '../src/flow/flowTable.js';
import { Conntrack, ctPolicyChanged, ctProcess, ctSweep } from '../src/flow/conntrack.js';
import { MemoryStore } from '../src/control/store.js';
import { Controller, type PolicyTarget } from '../src/control/controller.js';
import { ApiServer } from '../src/control/api.js';
import { apiCall } from '../src/cli/client.js';
import type { Dataplane } from '../src/datapath/dataplane.js';
import { machineInfo, machineLine, median, type MachineInfo } from './machine.js';

const WEB = 8, APP = 8, DB = 4;

export function quarantinePolicy(rules: number): string {
  const out = ['default: drop', 'spoofguard: true', 'workloads:'];
  const w = (kind: string, n: number, net: number) => {
    for (let i = 1; i <= n; i++) out.push(`  ${kind}-${i}: { nic: twq-${kind}${i}, mac: "02:00:00:00:${net.toString(16).padStart(2, '0')}:${i.toString(16).padStart(2, '0')}", ips: [10.0.${net}.${i}], tags: [${kind}] }`);
  };
  w('web', WEB, 1); w('app', APP, 2); w('db', DB, 3);
  out.push(
    'groups:', '  web: { tags: [web] }', '  app: { tags: [app] }', '  db: { tags: [db] }',
    '  quarantined: { tags: [quarantine] }', '  remediation: { cidrs: [10.0.99.10/32] }',
    'sections:',
    '  - name: emergency', '    rules:',
    '      - { id: quarantine-remediation, from: quarantined, to: remediation, services: [tcp/443], action: allow }',
    '      - { id: quarantine-out, from: quarantined, to: any, action: drop }',
    '      - { id: quarantine-in, from: any, to: quarantined, action: drop }',
    '  - name: application', '    rules:',
    '      - { id: web-to-app, from: web, to: app, services: [tcp/8080], action: allow }',
    '      - { id: app-to-db, from: app, to: db, services: [tcp/5432], action: allow }',
    '      - { id: web-to-db, from: web, to: db, action: reject }',
    '  - name: external', '    rules:',
  );
  for (let i = 0; i < rules - 6; i++) out.push(`      - { id: ext-${i}, from: 172.${16 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32, to: web, services: [tcp/${1024 + (i % 30000)}], action: allow }`);
  return `${out.join('\n')}\n`;
}

export interface QuarantineResult {
  machine: MachineInfo;
  rules: number;
  flows: number;
  rounds: number;
  apiCallMs: { median: number; max: number };
  returnToDropMs: { median: number; max: number };
  compileMs: { median: number; max: number };
  fullReloadMs: number;
  otherConnectionsKept: boolean;
  revalidateAllMs: number;
}

export async function benchQuarantine(opts: { rules?: number; flows?: number; rounds?: number } = {}): Promise<QuarantineResult> {
  const rules = opts.rules ?? 10_000, flowCount = opts.flows ?? 100_000, rounds = opts.rounds ?? 15;
  const text = quarantinePolicy(rules);
  const { policy } = policyParse(text, '(bench)', { shadows: false });
  if (!policy) throw new Error('bench policy is invalid');
  const nics = [...policy.workloads.values()].map((w) => w.nic);
  let compiled: CompiledPolicy = policyCompile(policy);
  const decider = new PolicyDecider(compiled, nics);
  const table = new FlowTable({ capacity: Math.max(1024, flowCount * 2), maxPorts: nics.length });
  const ct = new Conntrack(table, decider);
  const target: PolicyTarget = { setPolicy(c) { decider.setPolicy(c); compiled = c; ctPolicyChanged(ct); } };
  const controller = new Controller(new MemoryStore(text, '(bench)'), target);
  await controller.start();
  const dir = mkdtempSync(join(tmpdir(), 'tw-bq-'));
  const socket = join(dir, 'api.sock');
  // The tag route needs the controller only; status and flows (unused here) would read the data plane.
  const api = new ApiServer(controller, {} as Dataplane, { version: 'bench', socketPath: socket, listen: null, token: null });
  await api.start();

  const pkt = new Int32Array(PKT_WORDS);
  const template = frameBuild({ family: 4, proto: 6, src: '10.0.1.1', dst: '10.0.2.1', sport: 1024, dport: 8080, flags: TCP_SYN });
  parseFrame(template, 0, template.length, pkt);
  const portOf = (kind: string, i: number) => nics.indexOf(`twq-${kind}${i}`);
  const ip = (net: number, i: number) => ((10 << 24) | (net << 8) | i) | 0;
  /** One TCP packet web-w:sport -> app-a:8080 (or its reply) through the tracker. */
  const send = (w: number, a: number, sport: number, flags: number, reply: boolean, now: number): number => {
    pkt[PKT.src] = reply ? ip(2, a) : ip(1, w);
    pkt[PKT.dst] = reply ? ip(1, w) : ip(2, a);
    pkt[PKT.sport] = reply ? 8080 : sport;
    pkt[PKT.dport] = reply ? sport : 8080;
    pkt[PKT.tcpFlags] = flags;
    const from = reply ? portOf('app', a) : portOf('web', w), to = reply ? portOf('web', w) : portOf('app', a);
    return ctProcess(ct, pkt, from, to, now);
  };
  const open = (w: number, a: number, sport: number, now: number) => {
    send(w, a, sport, TCP_SYN, false, now);
    send(w, a, sport, TCP_SYN | TCP_ACK, true, now);
    return send(w, a, sport, TCP_ACK, false, now);
  };
  let now = 1;
  for (let k = 0; k < flowCount; k++) {
    const w = 1 + (k % WEB), a = 1 + ((k >> 3) % APP);
    if (open(w, a, 10_000 + Math.floor(k / 64), now) !== Outcome.forward) throw new Error('bench set-up: a connection did not open');
  }
  if (table.live < flowCount) throw new Error(`bench set-up: ${table.live} flows, wanted ${flowCount}`);

  const apiMs: number[] = [], dropMs: number[] = [], compileMs: number[] = [];
  let kept = true;
  for (let r = 0; r < rounds; r++) {
    // Fresh open connections of web-1 (the victim) and web-2 (a bystander) under the current policy.
    const victimPort = 60_000 + r, bystanderPort = 61_000 + r;
    now++;
    if (open(1, 1, victimPort, now) !== Outcome.forward || open(2, 1, bystanderPort, now) !== Outcome.forward) throw new Error('bench: a connection did not open');
    const t0 = performance.now();
    const res = await apiCall<{ apply: { compileMs: number } }>({ socket }, 'POST', '/v1/workloads/web-1/tags', { add: ['quarantine'], reason: 'bench' });
    const t1 = performance.now();
    const outcome = send(1, 1, victimPort, TCP_ACK, false, now);
    const t2 = performance.now();
    if (outcome !== Outcome.cut) throw new Error(`bench: the quarantined connection's packet was not cut (outcome ${outcome})`);
    if (send(2, 1, bystanderPort, TCP_ACK, false, now) !== Outcome.forward) kept = false;
    apiMs.push(t1 - t0);
    dropMs.push(t2 - t1);
    compileMs.push(res.body.apply.compileMs);
    await apiCall({ socket }, 'POST', '/v1/workloads/web-1/tags', { remove: ['quarantine'], reason: 'bench' });
  }
  // How long the background sweep would take to re-check every cached verdict after one change.
  const r0 = performance.now();
  ctSweep(ct, now, table.capacity);
  const revalidateAllMs = performance.now() - r0;

  const f0 = performance.now();
  const reparsed = policyParse(text, '(bench)', { shadows: false });
  policyCompile(reparsed.policy!);
  const fullReloadMs = performance.now() - f0;
  api.close();
  controller.stop();
  rmSync(dir, { recursive: true, force: true });
  const stat = (xs: number[]) => ({ median: median(xs), max: Math.max(...xs) });
  return {
    machine: machineInfo(), rules, flows: table.live, rounds,
    apiCallMs: stat(apiMs), returnToDropMs: stat(dropMs), compileMs: stat(compileMs), fullReloadMs,
    otherConnectionsKept: kept, revalidateAllMs,
  };
}

export function formatQuarantine(r: QuarantineResult): string {
  const f = (x: number) => x.toFixed(3);
  return [
    machineLine(r.machine),
    `policy ${r.rules} rules, ${r.flows} open connections, ${r.rounds} rounds (median / max)`,
    `tag API call (validate, compile, swap, answer): ${f(r.apiCallMs.median)} / ${f(r.apiCallMs.max)} ms (compile ${f(r.compileMs.median)} / ${f(r.compileMs.max)} ms)`,
    `from the call returning to the first dropped packet of the open connection: ${f(r.returnToDropMs.median)} / ${f(r.returnToDropMs.max)} ms`,
    `baseline, same run: full reload of the policy text (SIGHUP): ${f(r.fullReloadMs)} ms; the tag call is ${(r.fullReloadMs / r.apiCallMs.median).toFixed(0)}x faster`,
    `other VMs' open connections kept: ${r.otherConnectionsKept ? 'yes' : 'NO'}`,
    `re-checking every cached verdict in the background after a change: ${f(r.revalidateAllMs)} ms for ${r.flows} connections`,
  ].join('\n');
}
