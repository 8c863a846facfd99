/**
 * `tapwall bench report [--quick]` (what `npm run bench` runs): every
 * benchmark in one run, written to bench/results/REPORT.md with SVG charts
 * and the raw results as JSON.
 *
 *   classifier   rule trie vs linear scan, lookups/s against rule count
 *   flow cache   hit path, inserts, new connections, memory (bench flow)
 *   quarantine   tag API call and time to the first dropped packet
 *   metrics      forwarding rate with metrics scraped every second vs off
 *   end to end   new-flow packets/s against rule count through tapwall, the
 *                Linux bridge (no rules), nftables as a linear chain and as a
 *                set, Open vSwitch's userspace datapath with conntrack (when it
 *                installs and starts); at the largest size also one-flow pps and TCP; UDP
 *                round-trip percentiles for each path
 * Every comparison is measured side by side in the same run, and the report
 * prints the machine, the kernel and the versions used. --quick shrinks every
 * part (fewer sizes, shorter rounds) to finish in under two minutes.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchClassifyScaling } from './classify-scaling.js';
import { benchFlow, formatFlowBench } from './flow.js';
import { benchQuarantine, formatQuarantine } from './quarantine.js';
import { benchScale, formatScale } from './scale.js';
import { benchMetricsOverhead, formatMetricsOverhead } from './metrics-overhead.js';
import { benchE2e, type E2ePath, type E2eVariant } from './e2e.js';
import { machineInfo, machineLine } from './machine.js';
import { lineChart } from './svg.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

function version(cmd: string[], pattern: RegExp): string {
  let out: string;
  try {
    out = execFileSync(cmd[0], cmd.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    // Some tools (trafgen) print their version and exit non-zero.
    const err = e as { stdout?: string; code?: string };
    if (err.code === 'ENOENT' || !err.stdout) return `${cmd[0]}: not installed`;
    out = err.stdout;
  }
  return pattern.exec(out)?.[0] ?? out.split('\n')[0].trim();
}

const PATH_NAMES: Record<E2ePath, string> = {
  bridge: 'Linux bridge, no rules', 'nft-linear': 'nftables, linear chain', 'nft-set': 'nftables, one set', ovs: 'Open vSwitch userspace + ct',
  tapwall: 'tapwall --no-offload', 'tapwall-offload': 'tapwall (offload, the default)', 'tapwall-staged': 'tapwall with a staged policy',
};

export async function benchReport(opts: { quick?: boolean; out?: string; log?: (l: string) => void } = {}): Promise<string> {
  const quick = opts.quick ?? false;
  const outDir = opts.out ?? join(root, 'bench/results');
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  if (process.getuid?.() !== 0) throw Object.assign(new Error('bench report needs root (namespaces, TAPs, nftables)'), { code: 'EPERM' });
  mkdirSync(outDir, { recursive: true });
  const started = Date.now();
  const md: string[] = [];
  const raw: Record<string, unknown> = {};

  log('classifier...');
  const classify = await benchClassifyScaling({ quick, families: quick ? ['fw1'] : ['acl1', 'fw1', 'ipc1'], sizes: quick ? ['1k', '4k'] : undefined, log: () => {} });
  raw.classify = classify;
  log('flow cache...');
  const flow = await benchFlow({ quick: true });
  raw.flow = flow;
  log('quarantine...');
  const quarantine = await benchQuarantine(quick ? { rules: 2000, flows: 20_000, rounds: 5 } : {});
  raw.quarantine = quarantine;
  log('metrics overhead...');
  const metrics = await benchMetricsOverhead(quick ? { rounds: 1, seconds: 2 } : {});
  log('data-center policy sizes');
  const scale = await benchScale({ cases: quick ? ['rules10k'] : undefined });
  raw.metrics = metrics;

  log('end to end...');
  const sizes = quick ? [1000] : [100, 1000, 10_000];
  const seconds = quick ? 2 : 4;
  const e2e: E2eVariant[] = [];
  const skipped: Array<{ path: E2ePath; why: string }> = [];
  for (const [i, rules] of sizes.entries()) {
    const last = i === sizes.length - 1;
    const paths: E2ePath[] = [...(last ? ['bridge' as const] : []), 'nft-linear', 'nft-set', 'ovs', 'tapwall', ...(last && !quick ? ['tapwall-offload' as const, 'tapwall-staged' as const] : [])];
    // Once Open vSwitch failed to install or start, do not try again at the next size.
    const r = await benchE2e({ rules, seconds, paths: paths.filter((p) => !skipped.some((s) => s.path === p)), full: last && !quick, rttSamples: last ? (quick ? 300 : 2000) : 0, log });
    e2e.push(...r.variants);
    skipped.push(...r.skipped);
  }
  raw.e2e = e2e;
  raw.skipped = skipped;

  // Charts.
  const bridge = e2e.find((v) => v.path === 'bridge');
  const series = (['tapwall', 'nft-linear', 'nft-set', 'ovs'] as E2ePath[]).filter((p) => e2e.some((v) => v.path === p)).map((p) => ({ name: PATH_NAMES[p], points: e2e.filter((v) => v.path === p).map((v) => [v.rules, v.newFlowsPps] as [number, number]) }));
  if (bridge) series.push({ name: PATH_NAMES.bridge, points: sizes.map((n) => [n, bridge.newFlowsPps] as [number, number]) });
  writeFileSync(join(outDir, 'e2e-new-flows.svg'), lineChart({ title: 'New connections: 64-byte UDP packets/s, each a new flow', xLabel: 'rules in the policy', yLabel: 'packets per second', logX: true, logY: true, series }));
  const fams = [...new Set(classify.map((c) => c.rules.split('/').pop()!.split('_')[0]))];
  const famOf = (c: (typeof classify)[number]) => c.rules.split('/').pop()!.split('_')[0];
  writeFileSync(join(outDir, 'classify-lookups.svg'), lineChart({
    title: 'Classifier: lookups per second (ClassBench)', xLabel: 'rules', yLabel: 'lookups per second', logX: true, logY: true,
    series: fams.flatMap((f) => [
      { name: `trie, ${f}`, points: classify.filter((c) => famOf(c) === f).map((c) => [c.ruleCount, c.trieLookupsPerSec] as [number, number]) },
      { name: `linear, ${f}`, points: classify.filter((c) => famOf(c) === f).map((c) => [c.ruleCount, c.linearLookupsPerSec] as [number, number]) },
    ]),
  }));
  const withRtt = e2e.filter((v) => v.rttUs);
  writeFileSync(join(outDir, 'latency.svg'), lineChart({
    title: `UDP round trip through each path (${sizes.at(-1)} rules)`, xLabel: 'percentile', yLabel: 'microseconds',
    series: withRtt.map((v) => ({ name: PATH_NAMES[v.path], points: [[50, v.rttUs!.p50], [90, v.rttUs!.p90], [99, v.rttUs!.p99]] as Array<[number, number]> })),
  }));

  // The report.
  const m = machineInfo();
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
  md.push('# tapwall benchmark report', '',
    `Generated by \`npm run bench${quick ? ' -- --quick' : ''}\` on ${new Date().toISOString()} in ${Math.round((Date.now() - started) / 1000)} s.`,
    'Every comparison below was measured side by side in this run; these machines are shared and noisy, so read the ratios, not the absolute numbers.', '',
    '## Machine and versions', '',
    `- ${machineLine(m)}`,
    `- tapwall ${pkg.version}; ${version(['nft', '--version'], /nftables v[\d.]+/)}; ${version(['trafgen', '-v'], /trafgen [\d.]+/)} (netsniff-ng); ${version(['iperf3', '--version'], /iperf [\d.]+/)}`,
    `- Open vSwitch ${version(['ovs-vswitchd', '--version'], /\d+\.\d+\.\d+/)} (userspace datapath: this kernel has no openvswitch module)`,
    ...skipped.map((s) => `- not measured: ${PATH_NAMES[s.path]}: ${s.why}`), '');

  md.push('## End to end', '',
    `Two namespaces; trafgen sends 64-byte UDP on one core (new flows: random source address and port, every packet a new connection); ${seconds} s per figure. The policy is N rules that do not match followed by one that allows (nftables: \`ct state established accept\` first, then the same rules).`, '',
    '![new flows](e2e-new-flows.svg)', '',
    'The sender has one of the two cores to itself and bounds the rates, so each figure also says what it cost: the whole machine\'s CPU time per packet received (busy time from /proc/stat, the sender\'s included: the kernel paths forward in softirq inside the sender\'s own system calls, so the two cannot be told apart), and how many packets a CPU-second of it carries.', '',
    '| path | rules | new flows (pps) | CPU ns/pkt | pkts per CPU-s | one flow (pps) | CPU ns/pkt | pkts per CPU-s | TCP (Gbit/s) | UDP RTT p50 / p99 (us) |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const v of e2e) {
    const nf = v.newFlowsCpu, of = v.oneFlowCpu;
    md.push(`| ${PATH_NAMES[v.path]} | ${v.rules} | ${v.newFlowsPps} | ${nf?.nsPerPacket ?? '-'} | ${nf?.packetsPerCpuSecond ?? '-'} | ${v.oneFlowPps || '-'} | ${of?.nsPerPacket ?? '-'} | ${of?.packetsPerCpuSecond ?? '-'} | ${v.tcpGbps || '-'} | ${v.rttUs ? `${v.rttUs.p50} / ${v.rttUs.p99}` : '-'} |`);
  }
  md.push('');
  for (const n of sizes) {
    const at = (p: E2ePath) => e2e.find((v) => v.path === p && v.rules === n);
    const tw = at('tapwall');
    if (!tw) continue;
    const ratio = (p: E2ePath, label: string) => { const v = at(p); return v ? `tapwall / ${label} = ${(tw.newFlowsPps / Math.max(1, v.newFlowsPps)).toFixed(2)}x` : null; };
    const parts = [ratio('nft-linear', 'nftables linear'), ratio('nft-set', 'nftables set'), ratio('ovs', 'Open vSwitch'),
      bridge ? `tapwall / bridge = ${(tw.newFlowsPps / Math.max(1, bridge.newFlowsPps)).toFixed(2)}` : null].filter(Boolean);
    md.push(`- ${n} rules, new flows: ${parts.join('; ')}`);
  }
  md.push('', '![latency](latency.svg)', '');

  md.push('## Classifier', '', 'The rule trie against a linear scan of the same rules over the same ClassBench trace, in alternating rounds.', '',
    '![classifier](classify-lookups.svg)', '',
    '| set | rules | trie lookups/s | linear lookups/s | trie / linear | build ms | bytes/rule |', '|---|---:|---:|---:|---:|---:|---:|');
  for (const c of classify) md.push(`| ${c.rules.split('/').pop()} | ${c.ruleCount} | ${Math.round(c.trieLookupsPerSec)} | ${Math.round(c.linearLookupsPerSec)} | ${c.speedup}x | ${c.buildMs} | ${c.bytesPerRule} |`);
  md.push('', '## Flow cache', '', '```', formatFlowBench(flow), '```', '',
    '## Quarantine', '', '```', formatQuarantine(quarantine), '```', '',
    '## Metrics overhead', '', '```', formatMetricsOverhead(metrics), '```', '',
    '## Policy at data-center sizes', '', '`tapwall bench scale`: loading, shadow analysis, compiling, lookups, a tag change, and the forwarding gap of the data plane while the daemon\'s path prepares a change in its worker thread.', '', '```', formatScale(scale), '```', '');
  writeFileSync(join(outDir, 'REPORT.md'), `${md.join('\n')}\n`);
  writeFileSync(join(outDir, 'results.json'), `${JSON.stringify(raw, null, 2)}\n`);
  log(`wrote ${join(outDir, 'REPORT.md')} in ${Math.round((Date.now() - started) / 1000)} s`);
  return join(outDir, 'REPORT.md');
}
