// The per-rule metric families (src/metrics/ruleSeries.ts): the same text
// prom-client writes for the same series, and served over HTTP a slice per
// turn of the event loop, so that the data plane forwards between slices.
import t from 'tap';
import { request } from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';
import { MemLab } from './memlab.js';
import { metricsRegistry, metricsServe } from '../src/metrics/metrics.js';
import { RuleSeriesWriter } from '../src/metrics/ruleSeries.js';
import { slicedAll } from '../src/util/sliced.js';
import { RS, RS_COUNT } from '../src/flow/conntrack.js';
import { OUTCOME_COUNT, OUTCOME_NAMES } from '../src/packet/verdict.js';

const MAC = (i: number) => `02:7d:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;

/** A policy of `rules` rules over two workloads, in two sections, with mixed actions. */
function policyOf(rules: number): string {
  const lines: string[] = [];
  for (let i = 0; i < rules; i++) lines.push(`      - { id: r${i}, from: web, to: db, services: [tcp/${1000 + i}], action: ${['allow', 'drop', 'reject'][i % 3]} }`);
  const half = Math.ceil(rules / 2);
  return `
default: drop
workloads:
  a: { nic: twr-a, mac: "${MAC(1)}", ips: [10.61.0.1], tags: [web] }
  b: { nic: twr-b, mac: "${MAC(2)}", ips: [10.61.0.2], tags: [db] }
groups:
  web: { tags: [web] }
  db: { tags: [db] }
sections:
  - name: first
    rules:
${lines.slice(0, half).join('\n')}
  - name: second
    rules:
${lines.slice(half).join('\n')}
`;
}

/** One family's block (from its HELP line to the blank line or the end) of a metrics text. */
function family(text: string, name: string): string {
  const start = text.indexOf(`# HELP ${name} `);
  if (start < 0) return '';
  const end = text.indexOf('\n\n', start);
  return (end < 0 ? text.slice(start) : text.slice(start, end + 1)).replace(/\n?$/, '\n');
}

/** What the registry wrote for these families before (prom-client's labelled counters and gauge), for the same values. */
function promClientText(lab: MemLab, lastHitSeconds: (i: number) => number): Promise<string> {
  const registry = new Registry();
  const s = lab.dp.ct.ruleStats, c = lab.dp.compiled;
  new Gauge({
    name: 'tapwall_rule_last_hit_timestamp_seconds',
    help: 'When the rule last let through or stopped a packet (Unix time), kept across policy changes and restarts; 0: never. Rules of the policy in force.',
    labelNames: ['section', 'rule'], registers: [registry],
    collect() { c.rules.forEach((r, i) => this.set({ section: r.section, rule: r.id }, lastHitSeconds(i))); },
  });
  const counter = (name: string, help: string, k: number) => new Counter({
    name, help, labelNames: ['section', 'rule', 'action'], registers: [registry],
    collect() {
      this.inc({ section: '', rule: 'default', action: c.defaultAction }, s[k]);
      c.rules.forEach((r, i) => this.inc({ section: r.section, rule: r.id, action: r.action }, s[(i + 1) * RS_COUNT + k]));
    },
  });
  counter('tapwall_rule_packets_total', 'Packets matched by the rule at a vNIC (rule "default": the default action).', RS.packets);
  counter('tapwall_rule_bytes_total', 'Bytes matched by the rule at a vNIC.', RS.bytes);
  counter('tapwall_rule_connections_total', 'Connection decisions made by the rule (allowed or denied).', RS.connections);
  return registry.metrics();
}

const FAMILIES = ['tapwall_rule_last_hit_timestamp_seconds', 'tapwall_rule_packets_total', 'tapwall_rule_bytes_total', 'tapwall_rule_connections_total'];

function get(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    request(url, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      res.on('error', reject);
    }).on('error', reject).end();
  });
}

t.test('the per-rule families read as prom-client wrote them, for counts small, large and fractional', async (t) => {
  const lab = new MemLab(policyOf(7), { uplink: null });
  t.teardown(() => lab.stop());
  const s = lab.dp.ct.ruleStats;
  const values = [0, 1, 42, 2 ** 31 - 1, 2 ** 31, 2 ** 40 + 3, 1.5e21];
  for (let row = 0; row <= 7; row++) {
    s[row * RS_COUNT + RS.packets] = values[row % values.length];
    s[row * RS_COUNT + RS.bytes] = values[(row + 3) % values.length] * 1500;
    s[row * RS_COUNT + RS.connections] = row;
  }
  // Last hits on the data plane's clock (rules 0-2; the rest never), as the writer turns them into Unix seconds.
  const offset = Date.now() - performance.now();
  for (let i = 0; i < 3; i++) s[(i + 1) * RS_COUNT + RS.lastHit] = performance.now() - 1000 * (i + 1) + 0.25;
  const ours = await metricsRegistry(lab.dp).metrics();
  const lastHits = Array.from({ length: 7 }, (_, i) => {
    const here = s[(i + 1) * RS_COUNT + RS.lastHit];
    return here > 0 ? Math.round(offset + here) / 1000 : 0;
  });
  const theirs = await promClientText(lab, (i) => lastHits[i]);
  // The clock offset is taken again at the scrape: allow the last-hit values a millisecond either way.
  const lastHitOf = (text: string) => family(text, FAMILIES[0]).split('\n').filter((l) => l.startsWith('tapwall_')).map((l) => Number(l.split(' ')[1]));
  const a = lastHitOf(ours), b = lastHitOf(theirs);
  t.equal(a.length, 7, 'a last-hit series per rule');
  t.ok(a.every((v, i) => Math.abs(v - b[i]) <= 0.002), 'last hits as prom-client wrote them (within the clock offset taken again)');
  t.same(a.slice(3), [0, 0, 0, 0], 'rules never hit read 0');
  t.equal(family(ours, FAMILIES[0]).replace(/ [0-9.e+]+\n/g, ' X\n'), family(theirs, FAMILIES[0]).replace(/ [0-9.e+]+\n/g, ' X\n'), 'the last-hit family is otherwise the same text');
  for (const name of FAMILIES.slice(1)) t.equal(family(ours, name), family(theirs, name), `${name}: the same text`);
});

t.test('tapwall_port_frames_total reads as prom-client wrote it, over more ports than one slice holds', async (t) => {
  // 90 workloads (more than the 70 ports of a slice) and the uplink, some ports with counts.
  const workloads = Array.from({ length: 90 }, (_, i) => `  w${i}: { nic: twr${i}, mac: "${MAC(10 + i)}", ips: [10.61.1.${i + 1}], tags: [web] }`).join('\n');
  const lab = new MemLab(`default: drop\nworkloads:\n${workloads}\ngroups:\n  web: { tags: [web] }\nsections: []\n`, { uplink: 'twr-up' });
  t.teardown(() => lab.stop());
  for (let i = 0; i < lab.dp.outcomes.length; i += 7) lab.dp.outcomes[i] = i * 1000 + 3;
  const ours = await metricsRegistry(lab.dp).metrics();
  const registry = new Registry();
  const dp = lab.dp;
  new Counter({
    name: 'tapwall_port_frames_total',
    help: 'Frames received on the port, by the one outcome each ended in (forward, or a drop reason). Their sum is tapwall_port_received_packets_total.',
    labelNames: ['port', 'workload', 'outcome'], registers: [registry],
    collect() {
      dp.ports.forEach((p, i) => {
        if (p.retired) return;
        for (let o = 0; o < OUTCOME_COUNT; o++) this.inc({ port: p.io.name, workload: dp.workloadOf(i) ?? 'uplink', outcome: OUTCOME_NAMES[o] }, dp.outcomes[i * OUTCOME_COUNT + o]);
      });
    },
  });
  const theirs = await registry.metrics();
  const block = family(ours, 'tapwall_port_frames_total');
  t.equal(block.split('\n').filter((l) => l.startsWith('tapwall_port_frames_total{')).length, 91 * OUTCOME_COUNT, 'a series per port and outcome');
  t.equal(block, family(theirs, 'tapwall_port_frames_total'), 'the same text');
});

t.test('the last hit of a rule is the later of this process and the kept totals', async (t) => {
  const lab = new MemLab(policyOf(3), { uplink: null });
  t.teardown(() => lab.stop());
  const s = lab.dp.ct.ruleStats;
  s[1 * RS_COUNT + RS.lastHit] = 1; // rule 0: hit early in this process (the clock's first millisecond)
  const offset = Date.now() - performance.now();
  const before = new Map([['r0', Date.UTC(2030, 0, 1)], ['r1', Date.UTC(2020, 0, 1)]]);
  const text = slicedAll(new RuleSeriesWriter({ rules: lab.dp.compiled.rules, stats: s, defaultAction: 'drop', clockOffset: offset, lastHitBefore: (r) => before.get(r.id) ?? 0 }));
  const lines = family(text, FAMILIES[0]).split('\n').filter((l) => l.startsWith('tapwall_'));
  t.same(lines.map((l) => Number(l.split(' ')[1])), [Date.UTC(2030, 0, 1) / 1000, Date.UTC(2020, 0, 1) / 1000, 0], 'the kept total where it is later, this process where it is, 0 for never');
});

t.test('served over HTTP a slice per turn: every series arrives, and the event loop runs between slices', async (t) => {
  const RULES = 4500;
  const lab = new MemLab(policyOf(RULES), { uplink: null });
  t.teardown(() => lab.stop());
  const s = lab.dp.ct.ruleStats;
  for (let i = 0; i <= RULES; i++) s[i * RS_COUNT + RS.packets] = i;
  const { server, port } = await metricsServe(metricsRegistry(lab.dp), '127.0.0.1', 0);
  t.teardown(() => server.close());
  // Who ran in which order: the writer's slices ('s') and a task that comes back every turn ('t').
  const order: string[] = [];
  const next = RuleSeriesWriter.prototype.next;
  RuleSeriesWriter.prototype.next = function (this: RuleSeriesWriter, rows?: number) {
    const out = next.call(this, rows);
    if (out !== null) order.push('s');
    return out;
  };
  t.teardown(() => { RuleSeriesWriter.prototype.next = next; });
  let ticking = true;
  const tick = () => { if (!ticking) return; order.push('t'); setImmediate(tick); };
  setImmediate(tick);
  const body = await get(`http://127.0.0.1:${port}/metrics`);
  ticking = false;
  for (const name of FAMILIES) {
    const series = family(body, name).split('\n').filter((l) => l.startsWith(`${name}{`));
    t.equal(series.length, name === FAMILIES[0] ? RULES : RULES + 1, `${name}: a series per rule${name === FAMILIES[0] ? '' : ' and the default'}`);
  }
  t.match(body, /^tapwall_rule_packets_total\{section="second",rule="r4499",action="reject"\} 4500$/m, 'the last rule with its count');
  t.match(body, /^tapwall_port_received_packets_total\{/m, "and the registry's own families before them");
  const slices = order.filter((x) => x === 's').length;
  t.ok(slices >= 4 * Math.ceil(RULES / 1000), `written in slices (${slices})`);
  const inARow = order.join('').match(/s+/g)?.reduce((m, run) => Math.max(m, run.length), 0) ?? 0;
  t.equal(inARow, 1, 'never two slices without a turn of the event loop between them');
});
