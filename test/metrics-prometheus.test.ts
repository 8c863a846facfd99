// Metrics checked by a real Prometheus (Debian's package, on loopback, with its
// own data folder and port, stopped at the end): it scrapes a running tapwall
// that forwards real traffic between namespaces, and the counters it stored
// must equal the traffic sent and the drops provoked. Every query of the
// Grafana dashboard and every alerting rule is evaluated by that Prometheus
// and may name only metrics and labels that tapwall exports.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { Lab, SERVERS, UDP_STREAM, lineReader } from '../tools/lab.js';
import { apiCall } from '../src/cli/client.js';
import { tieredPolicy, untilValue } from './fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
/** Prometheus scrapes and evaluates once a second: allow it 20 s by default. */
const wait = <T>(what: string, get: () => T | Promise<T>, ok: (v: T) => boolean, ms = 20_000) => untilValue(what, get, ok, ms);
const POLICY = tieredPolicy('twx', 80, { webServices: 'tcp/8080, udp/5353' });
const HOSTS = [
  { ns: 'twx-web', nic: 'twx-web1', mac: '02:80:00:00:01:11', v4: '10.80.1.11/16' },
  { ns: 'twx-app', nic: 'twx-app1', mac: '02:80:00:00:02:21', v4: '10.80.2.21/16' },
  { ns: 'twx-db', nic: 'twx-db1', mac: '02:80:00:00:03:31', v4: '10.80.3.31/16' },
];

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}


/** Metric names and, per name, the label names tapwall exports (from its /metrics text). */
export function exportedMetrics(text: string): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? /.exec(line);
    if (!m) continue;
    const labels = out.get(m[1]) ?? new Set<string>();
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)) labels.add(l[1]);
    out.set(m[1], labels);
  }
  return out;
}

/** What a query names that tapwall does not export: unknown tapwall_ metrics, and labels no tapwall metric has. */
export function unknownNames(expr: string, legend: string, exported: Map<string, Set<string>>): string[] {
  const problems: string[] = [];
  const allLabels = new Set(['instance', 'job', 'le']);
  for (const [name, labels] of exported) if (name.startsWith('tapwall_')) for (const l of labels) allLabels.add(l);
  const names = [...expr.matchAll(/\btapwall_[a-z0-9_]+/g)].map((m) => m[0]);
  for (const n of names) if (!exported.has(n)) problems.push(`metric ${n}`);
  const used = new Set<string>();
  for (const sel of expr.matchAll(/\{([^}]*)\}/g)) for (const l of sel[1].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)) used.add(l[1]);
  for (const g of expr.matchAll(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g)) for (const l of g[1].split(',')) if (l.trim()) used.add(l.trim());
  for (const l of legend.matchAll(/\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}/g)) used.add(l[1]);
  for (const l of used) if (!allLabels.has(l)) problems.push(`label ${l}`);
  // A label on a specific metric must be one of that metric's own.
  for (const sel of expr.matchAll(/\b(tapwall_[a-z0-9_]+)\{([^}]*)\}/g)) {
    const own = exported.get(sel[1]);
    if (!own) continue;
    for (const l of sel[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)) if (!own.has(l[1]) && l[1] !== 'instance' && l[1] !== 'job') problems.push(`label ${l[1]} on ${sel[1]}`);
  }
  return problems;
}

t.test('a real Prometheus scraping tapwall', async (t) => {
  const lab = new Lab();
  let daemon: ChildProcess | null = null;
  let prom: ChildProcess | null = null;
  t.teardown(() => {
    if (prom && prom.exitCode === null) prom.kill('SIGKILL');
    if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
    lab.cleanup();
  });
  const dir = mkdtempSync(join(tmpdir(), 'tw-prom-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'policy.yaml'), POLICY);
  const socket = join(dir, 'api.sock');
  daemon = spawn(process.execPath, [join(root, 'bin/tapwall.js'), 'run', '--config', join(dir, 'policy.yaml'), '--state-dir', join(dir, 'state'),
    '--api-socket', socket, '--metrics', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const ready = JSON.parse(await lineReader(daemon, 15_000)()) as { metrics: string };
  const metricsTarget = new URL(ready.metrics).host;
  // IPv4 only: the VMs send nothing of their own (no IPv6 router solicitations or MLD reports), so the counts below are exactly the test's traffic.
  for (const h of HOSTS) lab.host(h.ns, h.nic, h.mac, [h.v4], [], { ipv6: false });

  // Prometheus: scrape every second, the project's alerting rules loaded.
  const promPort = await freePort();
  writeFileSync(join(dir, 'prometheus.yml'), [
    'global: { scrape_interval: 1s, evaluation_interval: 1s }',
    `rule_files: [${JSON.stringify(join(root, 'deploy/alerts.yml'))}]`,
    'scrape_configs:',
    `  - { job_name: tapwall, static_configs: [ { targets: ["${metricsTarget}"] } ] }`,
    '',
  ].join('\n'));
  prom = spawn('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${promPort}`], { stdio: 'ignore' });
  const promUrl = `http://127.0.0.1:${promPort}`;
  await wait('Prometheus to be ready', async () => (await fetch(`${promUrl}/-/ready`)).status, (s) => s === 200);
  const query = async (expr: string) => {
    const r = await (await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`)).json() as { status: string; error?: string; data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
    return r;
  };
  const scalar = async (expr: string) => {
    const r = await query(expr);
    return r.data.result.length === 1 ? Number(r.data.result[0].value[1]) : NaN;
  };
  await wait('the first scrape', () => scalar('up{job="tapwall"}'), (v) => v === 1);

  await t.test('the counters Prometheus stored match the traffic sent and the drops provoked', async (t) => {
    // A staged policy without web-to-app (evaluated, never enforced), so the staged-policy panel has data:
    // the web -> app connection below is one it would deny.
    const staged = await apiCall<{ stagedRevision: number }>({ socket }, 'PUT', '/v1/policy/staged', POLICY.replace(/ {6}- \{ id: web-to-app[^\n]*\n/, ''), { 'content-type': 'application/yaml' });
    t.equal(staged.body.stagedRevision, 1, 'a policy is staged');
    const server = lab.spawnIn('twx-app', SERVERS, ['app', '5353']);
    await new Promise<void>((resolve) => server.stdout!.on('data', (d) => { if (String(d).includes('ready')) resolve(); }));
    // 50 datagrams on one socket that the policy allows (each echoed), and 20 that it denies.
    t.equal(lab.runIn('twx-web', UDP_STREAM, ['10.80.2.21', '5353', '50', '5'], 15_000), 'echoed 50 of 50', 'web -> app: 50 datagrams and their echoes');
    t.equal(lab.runIn('twx-web', UDP_STREAM, ['10.80.3.31', '5353', '20', '5'], 15_000), 'echoed 0 of 20', 'web -> db: 20 datagrams dropped');

    const rulePackets = await wait('Prometheus to scrape the rule counters', () => scalar('tapwall_rule_packets_total{rule="web-to-app"}'), (v) => v === 100);
    t.equal(rulePackets, 100, 'web-to-app matched 100 packets (50 each way) in Prometheus');
    t.equal(await scalar('tapwall_rule_connections_total{rule="web-to-app"}'), 1, 'as one connection');
    t.equal(await scalar('tapwall_port_frames_total{port="twx-web1",outcome="policy"}'), 20, "web-1's port: 20 frames dropped by policy");
    t.equal(await scalar('tapwall_rule_packets_total{rule="default"}'), 20, 'decided by the default');

    // Whole-port counters: what Prometheus stored equals what tapwall itself reports (both stable once the traffic stopped).
    for (const h of HOSTS) {
      const own = async () => {
        const s = await apiCall<{ ports: Array<{ name: string; rx: number; tx: number }> }>({ socket }, 'GET', '/v1/status');
        return s.body.ports.find((p) => p.name === h.nic)!;
      };
      const mine = await own();
      const stored = await wait(`Prometheus to catch up on ${h.nic}`, () => scalar(`tapwall_port_received_packets_total{port="${h.nic}"}`), (v) => v === mine.rx, 10_000)
        .catch(async () => scalar(`tapwall_port_received_packets_total{port="${h.nic}"}`));
      t.equal(stored, (await own()).rx, `${h.nic}: frames received, Prometheus = tapwall (${stored})`);
    }
    const web = await apiCall<{ ports: Array<{ name: string; rx: number }> }>({ socket }, 'GET', '/v1/status');
    t.ok(web.body.ports.find((p) => p.name === 'twx-web1')!.rx >= 70, 'web-1 received at least the 70 datagrams sent');
    t.ok((await scalar('sum(tapwall_batch_frames_count)')) > 0, 'the batch histogram has observations');
  });

  await t.test('every dashboard and alert query names only what tapwall exports, and Prometheus evaluates it', async (t) => {
    const exported = exportedMetrics(await (await fetch(ready.metrics)).text());
    t.same(unknownNames('rate(tapwall_no_such_total{colour="red"}[1m])', '{{flavour}}', exported),
      ['metric tapwall_no_such_total', 'label colour', 'label flavour'], 'the check itself catches unknown names');
    const dashboard = JSON.parse(readFileSync(join(root, 'dashboards/tapwall.json'), 'utf8')) as { panels: Array<{ title: string; targets: Array<{ expr: string; legendFormat?: string }> }> };
    let queries = 0;
    for (const panel of dashboard.panels) {
      for (const target of panel.targets) {
        queries++;
        const expr = target.expr.replaceAll('$__rate_interval', '1m').replaceAll('$instance', '.*');
        t.same(unknownNames(expr, target.legendFormat ?? '', exported), [], `${panel.title}: ${target.expr} names exported metrics and labels`);
        const r = await query(expr);
        t.equal(r.status, 'success', `${panel.title}: Prometheus evaluates it${r.error ? `: ${r.error}` : ''}`);
        t.ok(r.data.result.length > 0, `${panel.title}: and it has data`);
      }
    }
    t.ok(queries >= 15, `${queries} dashboard queries checked`);
    const rules = parseYaml(readFileSync(join(root, 'deploy/alerts.yml'), 'utf8')) as { groups: Array<{ rules: Array<{ alert: string; expr: string }> }> };
    for (const rule of rules.groups.flatMap((g) => g.rules)) {
      t.same(unknownNames(rule.expr, '', exported), [], `alert ${rule.alert} names exported metrics and labels`);
      const r = await query(rule.expr);
      t.equal(r.status, 'success', `alert ${rule.alert}: Prometheus evaluates it`);
    }
    const loaded = await wait('the alerting rules to be evaluated', async () =>
      (await (await fetch(`${promUrl}/api/v1/rules`)).json()) as { data: { groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }> } },
    (j) => j.data.groups.flatMap((g) => g.rules).every((r) => r.health === 'ok'));
    t.equal(loaded.data.groups.flatMap((g) => g.rules).length, rules.groups.flatMap((g) => g.rules).length, 'Prometheus loaded every alerting rule, all healthy');
    const pressure = await query('ALERTS{alertstate="firing"}');
    t.same(pressure.data.result.map((x) => x.metric.alertname), [], 'and none fires on a healthy tapwall');
  });

  await t.test('a dead tapwall is not silent: TapwallDown goes pending as soon as a scrape fails', async (t) => {
    daemon!.kill('SIGKILL');
    const down = await wait('Prometheus to see tapwall down', () => scalar('up{job="tapwall"}'), (v) => v === 0);
    t.equal(down, 0, 'up{job="tapwall"} is 0');
    const pending = await wait('the TapwallDown alert', async () => (await query('ALERTS{alertname="TapwallDown"}')).data.result.map((x) => x.metric.alertstate), (s) => s.length > 0);
    t.same(pending, ['pending'], 'TapwallDown is pending (it fires after a minute of this)');
  });

  prom.kill('SIGTERM');
  daemon.kill('SIGTERM');
});
