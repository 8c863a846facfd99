/**
 * `tapwall demo`: a small data center, live. Network namespaces stand in for
 * the VMs of the three-tier example (web-1, web-2, app-1, db-1, jump-1), each
 * on a TAP device that tapwall owns, and for an "internet" peer behind an
 * uplink veth. Real traffic runs between them: HTTP from the internet to the
 * web tier, web to app, app to db, an admin's SSH, a web server trying the
 * database directly, a port scan from a web server. A table of ports,
 * allowed and denied connections, top rules and drops by reason refreshes
 * every second from tapwall's API.
 *
 * Midway an "anti-malware" integration tags web-1 `quarantine` through the
 * API: its open connections are cut and its attempts denied while everyone
 * else carries on; later the tag is lifted. Before and after the tag, one
 * round of connection checks is shown with the rule that decided each.
 * Runs until Ctrl-C or --duration, then removes everything it created.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CONNECT_LOOP, Lab, PORT_SCAN, SERVERS, TCP_CLIENT, TCP_STREAM, lineReader, sh } from './lab.js';
import { policyParse } from '../src/policy/load.js';
import type { TraceResult } from '../src/control/trace.js';
import { apiCall } from '../src/cli/client.js';

const root = fileURLToPath(new URL('../../', import.meta.url)); // dist/tools/demo.js -> the repository

interface Check { from: string; to: string; ip: string; port: number }

/** One round of connection checks; `internet` is the peer behind the uplink. */
const CHECKS: Check[] = [
  { from: 'internet', to: 'web-1', ip: '10.0.1.11', port: 80 },
  { from: 'jump-1', to: 'web-1', ip: '10.0.1.11', port: 22 },
  { from: 'web-1', to: 'app-1', ip: '10.0.2.21', port: 8080 },
  { from: 'web-2', to: 'app-1', ip: '10.0.2.21', port: 8080 },
  { from: 'app-1', to: 'db-1', ip: '10.0.3.31', port: 5432 },
  { from: 'web-1', to: 'db-1', ip: '10.0.3.31', port: 5432 },
  { from: 'db-1', to: 'app-1', ip: '10.0.2.21', port: 8080 },
  { from: 'web-1', to: 'web-2', ip: '10.0.1.12', port: 8443 },
];

const SERVICES: Record<string, string[]> = { 'web-1': ['80', '443', '22', '8443'], 'web-2': ['80', '443', '22', '8443'], 'app-1': ['8080', '22'], 'db-1': ['5432', '22'], 'jump-1': ['22'] };
const INTERNET = { ns: 'twd-inet', uplink: 'twd-up', peer: 'twd-upp', mac: '02:00:00:00:ff:01', gateway: '10.0.255.254', address: '203.0.113.10' };

type PortView = { name: string; workload: string | null; up: boolean; rx: number; tx: number; outcomes: Record<string, number> };
type RuleView = { section: string; id: string; action: string; packets: number; connections: number };

export interface DemoOptions {
  policy?: string;
  /** Seconds to run; null or 0: until Ctrl-C. */
  duration?: number | null;
  out?: (line: string) => void;
}

export async function runDemo(opts: DemoOptions = {}): Promise<void> {
  const out = opts.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const tty = process.stdout.isTTY === true && !opts.out;
  if (process.getuid?.() !== 0) throw Object.assign(new Error('the live demo needs root (namespaces and TAP devices)'), { code: 'EPERM' });
  const policyPath = opts.policy ?? join(root, 'examples/three-tier.yaml');
  const text = readFileSync(policyPath, 'utf8');
  const { policy } = policyParse(text, policyPath);
  if (!policy) throw new Error(`${policyPath} is not a valid policy: run tapwall check on it`);
  const duration = opts.duration && opts.duration > 0 ? opts.duration : null;
  const lab = new Lab();
  let daemon: ChildProcess | null = null;
  let dir = '';
  let stopping = false;
  let wake: (() => void) | null = null;
  const cleanup = () => {
    if (daemon && daemon.exitCode === null) daemon.kill('SIGTERM');
    lab.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  };
  // Ctrl-C ends the live phase; the cleanup below runs as on a normal end.
  const onSignal = () => { stopping = true; wake?.(); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    dir = mkdtempSync(join(tmpdir(), 'tw-demo-'));
    const live = join(dir, 'policy.yaml');
    writeFileSync(live, text);

    // The internet: a namespace behind the uplink, the VMs' default gateway, answering from 203.0.113.10.
    lab.vethHost(INTERNET.ns, INTERNET.uplink, INTERNET.peer, INTERNET.mac, [`${INTERNET.gateway}/16`]);
    sh(['ip', '-n', INTERNET.ns, 'addr', 'add', `${INTERNET.address}/32`, 'dev', 'lo']);
    sh(['ip', '-n', INTERNET.ns, 'route', 'replace', '10.0.0.0/16', 'dev', INTERNET.peer, 'src', INTERNET.address]);

    daemon = spawn(process.execPath, [join(root, 'bin/tapwall.js'), 'run', '--config', live, '--uplink', INTERNET.uplink, '--metrics', '127.0.0.1:0',
      '--state-dir', join(dir, 'state'), '--api-socket', join(dir, 'api.sock'), '--flow-log', join(dir, 'flows.jsonl')], { stdio: ['ignore', 'pipe', 'ignore'] });
    const ready = JSON.parse(await lineReader(daemon)()) as { metrics: string | null };
    const api = { socket: join(dir, 'api.sock') };
    out(`tapwall is running with ${policyPath}: a TAP device per VM, an uplink to the "internet"; Prometheus metrics on ${ready.metrics}`);

    // The VMs: a namespace each, on the kernel side of its TAP, all in 10.0.0.0/16, the internet behind the gateway.
    const nsOf = (w: string) => (w === 'internet' ? INTERNET.ns : `twd-${w.replace('-', '')}`);
    for (const w of policy.workloads.values()) {
      const v4 = w.ips.filter((p) => p.family === 4).map((p) => `${p.text.replace(/\/32$/, '')}/16`);
      lab.host(nsOf(w.name), w.nic, w.mac, v4);
      sh(['ip', '-n', nsOf(w.name), 'route', 'add', 'default', 'via', INTERNET.gateway]);
    }
    const servers = Object.entries(SERVICES).map(([w, ports]) => lab.spawnIn(nsOf(w), SERVERS, [w, ...ports]));
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => {
      s.stdout!.on('data', (d) => { if (String(d).includes('ready')) resolve(); });
      setTimeout(resolve, 5000);
    })));
    out(`VMs up: ${[...policy.workloads.values()].map((w) => `${w.name} (${w.ips[0].text.replace(/\/32$/, '')})`).join(', ')}; internet peer ${INTERNET.address}`);

    const checkRound = async (title: string): Promise<string[]> => {
      const lines = ['', title, `  ${'connection'.padEnd(32)} ${'result'.padEnd(10)} decided by`];
      for (const c of CHECKS) {
        const res = lab.runIn(nsOf(c.from), TCP_CLIENT, [c.ip, String(c.port), '1500']);
        const shown = res.startsWith('ok:') ? 'ALLOWED' : res === 'refused' ? 'REJECTED' : res === 'timeout' ? 'DROPPED' : res;
        const fromIp = c.from === 'internet' ? INTERNET.address : policy.workloads.get(c.from)!.ips[0].text.replace(/\/32$/, '');
        // The running daemon's own tracer explains the verdict.
        const tr = (await apiCall<TraceResult>(api, 'POST', '/v1/trace', { packet: `tcp ${fromIp}:40000 -> ${c.ip}:${c.port}` })).body;
        const last = tr.steps[tr.steps.length - 1];
        const by = last.rule ? `${last.point} ${last.rule.section}/${last.rule.id}` : `${last.point} default ${tr.verdict}`;
        lines.push(`  ${`${c.from} -> ${c.to}:${c.port}`.padEnd(32)} ${shown.padEnd(10)} ${by}`);
      }
      return lines;
    };
    let checks = await checkRound('Before: the three-tier policy');
    for (const l of checks) out(l);

    // Traffic that keeps running: long-lived connections, repeated attempts, a port scan.
    const forever = String(((duration ?? 3600) + 60) * 1000);
    const stream = (from: string, ip: string, port: number) => lab.spawnIn(nsOf(from), TCP_STREAM, [ip, String(port), '250', forever]);
    stream('internet', '10.0.1.11', 80);
    stream('internet', '10.0.1.12', 80);
    stream('web-1', '10.0.2.21', 8080);
    stream('web-2', '10.0.2.21', 8080);
    stream('app-1', '10.0.3.31', 5432);
    const loop = (from: string, ip: string, port: number, every: number) => lab.spawnIn(nsOf(from), CONNECT_LOOP, [ip, String(port), String(every), '1000']);
    loop('internet', '10.0.1.11', 443, 700);
    loop('internet', '10.0.1.12', 443, 900);
    loop('jump-1', '10.0.1.11', 22, 3000);
    loop('web-1', '10.0.3.31', 5432, 2000);
    loop('web-1', '10.0.2.21', 8080, 1500);
    loop('db-1', '10.0.2.21', 8080, 5000);

    const events: string[] = [];
    const t0 = Date.now();
    const clock = () => { const s = Math.floor((Date.now() - t0) / 1000); return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`; };
    const event = (e: string) => {
      events.push(`${clock()}  ${e}`);
      if (!tty) out(`${clock()}  ${e}`);
    };
    const scan = lab.spawnIn(nsOf('web-2'), PORT_SCAN, ['10.0.2.21', '7500', '8523', '400']);
    event('web-2 starts a TCP port scan of app-1, ports 7500-8523');
    scan.stdout!.on('data', (d) => event(`web-2's port scan of app-1 ended: ${String(d).trim()} (only 8080 is allowed from web)`));

    const render = async (): Promise<string[]> => {
      const status = (await apiCall<{ generation: number; flows: { live: number }; ports: PortView[] }>(api, 'GET', '/v1/status')).body;
      const rules = (await apiCall<{ rules: RuleView[]; default: { action: string; packets: number; connections: number } }>(api, 'GET', '/v1/rules')).body;
      const cut = (await apiCall<{ matched: number }>(api, 'GET', '/v1/flows?verdict=cut&limit=1')).body.matched;
      const lines = [`tapwall live  ${clock()}  policy generation ${status.generation}  metrics ${ready.metrics}  ${duration ? `(${duration} s)` : 'Ctrl-C to stop'}`];
      lines.push(`  ${'PORT'.padEnd(10)} ${'WORKLOAD'.padEnd(9)} ${'RX'.padStart(7)} ${'TX'.padStart(7)}  DROPPED (by reason)`);
      const drops: Record<string, number> = {};
      for (const p of status.ports) {
        const d = Object.entries(p.outcomes).filter(([k, v]) => k !== 'forward' && v > 0);
        for (const [k, v] of d) drops[k] = (drops[k] ?? 0) + v;
        lines.push(`  ${p.name.padEnd(10)} ${(p.workload ?? '(uplink)').padEnd(9)} ${String(p.rx).padStart(7)} ${String(p.tx).padStart(7)}  ${d.map(([k, v]) => `${k} ${v}`).join(', ') || '-'}`);
      }
      const allowed = rules.rules.filter((r) => r.action === 'allow').reduce((n, r) => n + r.connections, 0);
      const denied = rules.rules.filter((r) => r.action !== 'allow').reduce((n, r) => n + r.connections, 0) + (rules.default.action === 'allow' ? 0 : rules.default.connections);
      lines.push(`  connections: ${allowed} allowed, ${denied} denied; ${status.flows.live} tracked now, ${cut} cut by a policy change`);
      lines.push(`  drops by reason: ${Object.entries(drops).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}`);
      const top = [...rules.rules.map((r) => ({ name: `${r.section}/${r.id}`, action: r.action, connections: r.connections, packets: r.packets })),
        { name: '(default)', action: rules.default.action, connections: rules.default.connections, packets: rules.default.packets }]
        .filter((r) => r.connections > 0).sort((a, b) => b.connections - a.connections).slice(0, 6);
      lines.push('  top rules by connections:');
      for (const r of top) lines.push(`    ${r.name.padEnd(36)} ${r.action.padEnd(7)} ${String(r.connections).padStart(6)} connections ${String(r.packets).padStart(8)} packets`);
      return lines;
    };

    const sleep = (ms: number) => new Promise<void>((resolve) => { const timer = setTimeout(resolve, ms); wake = () => { clearTimeout(timer); resolve(); }; });
    const tQuarantine = duration ? Math.max(8, duration * 0.35) : 20;
    const tLift = duration ? Math.max(tQuarantine + 8, duration * 0.75) : 45;
    let quarantined = false, lifted = false, lastPrinted = 0;
    let frame: string[] = [];
    while (!stopping) {
      const t = (Date.now() - t0) / 1000;
      if (duration && t >= duration) break;
      if (!quarantined && t >= tQuarantine) {
        quarantined = true;
        const r = await apiCall<{ apply: { compileMs: number } }>(api, 'POST', '/v1/workloads/web-1/tags', { add: ['quarantine'], reason: 'anti-malware: trojan found', by: 'demo anti-malware' });
        event(`anti-malware tags web-1 "quarantine" through the API: in force after ${r.body.apply.compileMs.toFixed(1)} ms of compiling`);
        await sleep(1500);
        const cutNow = (await apiCall<{ matched: number; flows: Array<{ src: string; dst: string; dport: number }> }>(api, 'GET', '/v1/flows?verdict=cut&workload=web-1')).body;
        event(`web-1's open connections cut: ${cutNow.matched} (${cutNow.flows.map((f) => `${f.src} -> ${f.dst}:${f.dport}`).join(', ')})`);
        checks = await checkRound('After: web-1 tagged `quarantine` through the API');
        if (!tty) for (const l of checks) out(l);
      }
      if (quarantined && !lifted && t >= tLift) {
        lifted = true;
        await apiCall(api, 'POST', '/v1/workloads/web-1/tags', { remove: ['quarantine'], reason: 'cleaned and rescanned', by: 'demo anti-malware' });
        event('anti-malware lifts the tag on web-1: its new connections are allowed again');
      }
      frame = await render();
      if (tty) {
        process.stdout.write(`\x1b[H\x1b[2J${[...frame, ...checks, '', 'events:', ...events.slice(-8).map((e) => `  ${e}`)].join('\n')}\n`);
      } else if (Date.now() - lastPrinted >= 5000) {
        lastPrinted = Date.now();
        out('');
        for (const l of frame) out(l);
      }
      await sleep(1000);
    }
    if (tty) for (const l of checks) out(l);
    out('');
    for (const l of frame) out(l);
    out('');
    out('The audit log has every tag change, with who and why:');
    for (const line of readFileSync(join(dir, 'state', 'audit.jsonl'), 'utf8').trim().split('\n')) {
      const e = JSON.parse(line) as Record<string, string>;
      if (e.action.startsWith('tag.')) out(`  ${e.time}  ${e.action} ${e.workload} ${e.tag}  by ${e.by}: ${e.reason}`);
    }
    const flowLog = readFileSync(join(dir, 'flows.jsonl'), 'utf8').trim().split('\n').filter(Boolean);
    out(`The flow log has ${flowLog.length} lines (logged rules and default-deny drops, rate-limited per vNIC); the last:`);
    out(`  ${flowLog.at(-1) ?? '(none)'}`);
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    cleanup();
    out('');
    out('Removed the demo namespaces, TAP devices and files.');
  }
}
