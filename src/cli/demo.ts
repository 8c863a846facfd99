/**
 * `tapwall demo`: the three-tier example, live. Network namespaces stand in
 * for the VMs (web-1, web-2, app-1, db-1, jump-1), each on a TAP device that
 * tapwall owns; real connections are tried between them and their fate is
 * shown with the rule that decided it. Midway web-1 is tagged `quarantine`
 * through the API (as an anti-malware integration would), the policy
 * follows at once, and the same connections are tried again; then the tag is
 * lifted. Everything it creates is removed at the end,
 * also on Ctrl-C or failure.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, TCP_CLIENT, SERVERS, lineReader } from '../util/lab.js';
import { policyParse } from '../policy/load.js';
import type { TraceResult } from '../control/trace.js';
import { apiCall } from './client.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));

interface Check { from: string; to: string; ip: string; port: number }

const CHECKS: Check[] = [
  { from: 'jump-1', to: 'web-1', ip: '10.0.1.11', port: 22 },
  { from: 'web-1', to: 'app-1', ip: '10.0.2.21', port: 8080 },
  { from: 'web-2', to: 'app-1', ip: '10.0.2.21', port: 8080 },
  { from: 'app-1', to: 'db-1', ip: '10.0.3.31', port: 5432 },
  { from: 'web-1', to: 'db-1', ip: '10.0.3.31', port: 5432 },
  { from: 'db-1', to: 'app-1', ip: '10.0.2.21', port: 8080 },
  { from: 'web-1', to: 'web-2', ip: '10.0.1.12', port: 8443 },
];

export async function runDemo(opts: { policy?: string; out?: (line: string) => void } = {}): Promise<void> {
  const out = opts.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  if (process.getuid?.() !== 0) throw Object.assign(new Error('the live demo needs root (namespaces and TAP devices)'), { code: 'EPERM' });
  const policyPath = opts.policy ?? join(root, 'examples/three-tier.yaml');
  const text = readFileSync(policyPath, 'utf8');
  const { policy } = policyParse(text, policyPath);
  if (!policy) throw new Error(`${policyPath} is not a valid policy: run tapwall check on it`);
  const lab = new Lab();
  let daemon: ChildProcess | null = null;
  const cleanup = () => {
    if (daemon && daemon.exitCode === null) daemon.kill('SIGTERM');
    lab.cleanup();
  };
  const onSignal = () => { cleanup(); process.exit(130); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let dir = '';
  try {
    dir = mkdtempSync(join(tmpdir(), 'tw-demo-'));
    const live = join(dir, 'policy.yaml');
    writeFileSync(live, text);
    daemon = spawn(process.execPath, [join(root, 'bin/tapwall.js'), 'run', '--config', live, '--metrics', '127.0.0.1:0', '--state-dir', join(dir, 'state'), '--api-socket', join(dir, 'api.sock')], { stdio: ['ignore', 'pipe', 'ignore'] });
    const nextLine = lineReader(daemon);
    const ready = JSON.parse(await nextLine()) as { metrics: string | null };
    out(`tapwall is running with ${policyPath}: one TAP device per VM; Prometheus metrics on ${ready.metrics}`);

    // The VMs: a namespace each, on the kernel side of its TAP, all in 10.0.0.0/16.
    const nsOf = (w: string) => `twd-${w.replace('-', '')}`;
    for (const w of policy.workloads.values()) {
      const v4 = w.ips.filter((p) => p.family === 4).map((p) => `${p.text.replace(/\/32$/, '')}/16`);
      lab.host(nsOf(w.name), w.nic, w.mac, v4);
    }
    const services: Record<string, string[]> = { 'web-1': ['22', '8443'], 'web-2': ['22', '8443'], 'app-1': ['8080', '22'], 'db-1': ['5432', '22'] };
    const servers = Object.entries(services).map(([w, ports]) => lab.spawnIn(nsOf(w), SERVERS, [w, ...ports]));
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => {
      s.stdout!.on('data', (d) => { if (String(d).includes('ready')) resolve(); });
      setTimeout(resolve, 5000);
    })));
    out(`VMs up: ${[...policy.workloads.values()].map((w) => `${w.name} (${w.ips[0].text.replace(/\/32$/, '')})`).join(', ')}`);

    const api = { socket: join(dir, 'api.sock') };
    const round = async (title: string) => {
      out('');
      out(title);
      out(`  ${'connection'.padEnd(32)} ${'result'.padEnd(10)} decided by`);
      for (const c of CHECKS) {
        const res = lab.runIn(nsOf(c.from), TCP_CLIENT, [c.ip, String(c.port), '1500']);
        const shown = res.startsWith('ok:') ? 'ALLOWED' : res === 'refused' ? 'REJECTED' : res === 'timeout' ? 'DROPPED' : res;
        const fromIp = policy.workloads.get(c.from)!.ips[0].text.replace(/\/32$/, '');
        // The running daemon's own tracer explains the verdict.
        const tr = (await apiCall<TraceResult>(api, 'POST', '/v1/trace', { packet: `tcp ${fromIp}:40000 -> ${c.ip}:${c.port}`, from: c.from })).body;
        const last = tr.steps[tr.steps.length - 1];
        const by = last.rule ? `${last.point} ${last.rule.section}/${last.rule.id}` : `${last.point} default ${tr.verdict}`;
        out(`  ${`${c.from} -> ${c.to}:${c.port}`.padEnd(32)} ${shown.padEnd(10)} ${by}`);
      }
    };
    await round('Before: the three-tier policy');

    // The anti-malware tool flags web-1: it tags it `quarantine` through the API, and the policy follows at once.
    const tagged = await apiCall<{ apply: { compileMs: number } }>(api, 'POST', '/v1/workloads/web-1/tags', { add: ['quarantine'], reason: 'anti-malware: trojan found', by: 'demo anti-malware' });
    await round(`After: web-1 tagged \`quarantine\` through the API (compiled and swapped in ${tagged.body.apply.compileMs.toFixed(1)} ms)`);
    await apiCall(api, 'POST', '/v1/workloads/web-1/tags', { remove: ['quarantine'], reason: 'cleaned', by: 'demo anti-malware' });
    out('');
    out('Tag lifted. The audit log has both changes, with who and why:');
    for (const line of readFileSync(join(dir, 'state', 'audit.jsonl'), 'utf8').trim().split('\n')) {
      const e = JSON.parse(line) as Record<string, string>;
      if (e.action.startsWith('tag.')) out(`  ${e.time}  ${e.action} ${e.workload} ${e.tag}  by ${e.by}: ${e.reason}`);
    }

    const statsLine = nextLine();
    daemon.kill('SIGUSR2');
    const stats = JSON.parse(await statsLine) as { stats: Record<string, Record<string, number>>; flows: number; gc: number };
    out('');
    out(`Counters per vNIC (every frame received ends in exactly one outcome); ${stats.flows} connections tracked, ${stats.gc} garbage collections:`);
    for (const [port, s] of Object.entries(stats.stats)) {
      const parts = Object.entries(s).filter(([k, v]) => v && !['up', 'rxErrors', 'tx', 'txDropped'].includes(k)).map(([k, v]) => `${k} ${v}`);
      out(`  ${port.padEnd(10)} ${parts.join(', ')}`);
    }
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
    out('');
    out('Removed the demo namespaces and TAP devices.');
  }
}
