/**
 * `tapwall bench e2e`: two namespaces, a sender and a receiver, joined in
 * several ways in the same run (each selectable):
 *   bridge      a Linux bridge, no filtering (the ceiling the kernel gives);
 *   nft-linear  the same bridge, filtered through br_netfilter by an inet
 *               forward chain of RULES linear rules with connection tracking;
 *   nft-set     the same, with the RULES rules as one set lookup;
 *   ovs         Open vSwitch's userspace datapath with a conntrack firewall
 *               of RULES OpenFlow rules (when it installs and starts);
 *   tapwall     tapwall with TAP ports and a policy of the same RULES rules,
 *               without virtio-net headers (--no-offload) and with them
 *               (its default).
 * For each: 64-byte UDP frames per second received (trafgen from netsniff-ng
 * sending on one core), once as one flow and once as new flows (random
 * source address and port: every packet a new connection), and one iperf3
 * TCP stream. Each figure is packets counted at the receiver's NIC over a
 * fixed time, with the CPU time it cost per packet (the whole machine's:
 * the sender has one core to itself and bounds the rates here, so the
 * rates alone hide what each path costs). Ratios are against
 * the bridge and against nftables from the same run. Every namespace and link is named tw... and removed at the end.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, lineReader, sh } from '../tools/lab.js';
import { apiCall } from '../src/cli/client.js';
import { machineInfo, type MachineInfo } from './machine.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const MAC_A = '02:7b:00:00:00:0a', MAC_B = '02:7b:00:00:00:0b';
const IP_A = '10.123.0.1', IP_B = '10.123.0.2';

export type E2ePath = 'bridge' | 'nft-linear' | 'nft-set' | 'ovs' | 'tapwall' | 'tapwall-offload' | 'tapwall-staged';

/**
 * Where the CPU went while a load ran, per packet received: the whole
 * machine's busy time (the sender's included: the same trafgen for every
 * path; the kernel paths forward in softirq, much of it run in the sender's
 * own system calls, so the sender's time cannot be told apart from theirs),
 * the kernel's softirq time, and the forwarding process's own time (tapwall
 * or ovs-vswitchd; 0 for the kernel paths). From /proc/stat and
 * /proc/PID/stat, in clock ticks (10 ms).
 */
export interface CpuCost {
  /** Nanoseconds of CPU per packet received, the whole machine's. */
  nsPerPacket: number;
  softirqNsPerPacket: number;
  forwarderNsPerPacket: number;
  /** Packets received per second of that CPU time: what a core would carry. */
  packetsPerCpuSecond: number;
}

export interface E2eVariant {
  name: string;
  path: E2ePath;
  rules: number;
  oneFlowPps: number;
  newFlowsPps: number;
  oneFlowCpu?: CpuCost;
  newFlowsCpu?: CpuCost;
  tcpGbps: number;
  gcPerMillionPackets?: number;
  /** Round-trip times of sequential 64-byte UDP echoes, in microseconds. */
  rttUs?: { p50: number; p90: number; p99: number; max: number };
}

export interface E2eResult {
  machine: MachineInfo;
  rules: number;
  seconds: number;
  variants: E2eVariant[];
  ratios: { tapwallVsBridgeOneFlow: number; tapwallVsNftNewFlows: number; tapwallTcpGbps: number };
  /** Why a requested path was not measured (e.g. Open vSwitch would not install or start). */
  skipped: Array<{ path: E2ePath; why: string }>;
}

export interface E2eOptions {
  rules?: number;
  seconds?: number;
  log?: (l: string) => void;
  /** Which paths to measure (default: bridge, nftables linear, tapwall, tapwall --offload). */
  paths?: E2ePath[];
  /** Measure one-flow pps and TCP too (default true); new-flows pps is always measured. */
  full?: boolean;
  /** UDP echo round trips to time (0: none). */
  rttSamples?: number;
}

/** Inside a namespace: `count` sequential UDP echoes to host:port; prints the round-trip percentiles in microseconds as JSON. */
const RTT_PROBE = `
const [host, port, count] = process.argv.slice(1).map((v, i) => (i === 0 ? v : Number(v)));
const u = require('dgram').createSocket('udp4');
const rtts = [];
let sent = 0, t0 = 0, timer = null;
const next = () => {
  if (sent === count) { u.close(); rtts.sort((a, b) => a - b); const q = (p) => rtts[Math.min(rtts.length - 1, Math.floor(p * rtts.length))] || 0;
    console.log(JSON.stringify({ p50: q(0.5), p90: q(0.9), p99: q(0.99), max: rtts[rtts.length - 1] || 0, answered: rtts.length })); return; }
  sent++; t0 = process.hrtime.bigint();
  timer = setTimeout(next, 200); // a lost echo does not stop the probe
  u.send(Buffer.alloc(18), port, host);
};
u.on('message', () => { clearTimeout(timer); rtts.push(Number(process.hrtime.bigint() - t0) / 1000); next(); });
u.bind(0, () => next());
`;

/** Inside a namespace: a UDP echo on a port. */
const UDP_ECHO = `
const u = require('dgram').createSocket('udp4');
u.on('message', (m, r) => u.send(m, r.port, r.address));
u.bind(Number(process.argv[1]), () => console.log('ready'));
setTimeout(() => process.exit(0), 600000);
`;

function need(cmd: string, pkg: string): void {
  try { execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }); } catch {
    execFileSync('sh', ['-c', `apt-get install -y -qq ${pkg} >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq ${pkg} >/dev/null)`]);
  }
}

/** A trafgen configuration for 60-byte (64 on the wire) UDP frames A -> B:9; `newFlows` randomises source address and port. */
function trafgenConfig(newFlows: boolean): string {
  const mac = (m: string) => m.split(':').map((h) => `0x${h}`).join(', ');
  const ip = (a: string) => a.split('.').join(', ');
  const src = newFlows ? '10, 123, drnd(2)' : ip(IP_A);
  // Random sources break the IP checksum's constancy: recompute it per frame then.
  return `{
  ${mac(MAC_B)}, ${mac(MAC_A)}, 0x08, 0x00,
  0x45, 0, c16(46), c16(0), 0x40, 0, 64, 17, csumip(14, 33),
  ${src}, ${ip(IP_B)},
  ${newFlows ? 'drnd(2)' : 'c16(4000)'}, c16(9), c16(26), c16(0),
  fill(0x00, 18)
}
`;
}

function rxPackets(ns: string, dev: string): number {
  return Number(sh(['ip', 'netns', 'exec', ns, 'cat', `/sys/class/net/${dev}/statistics/rx_packets`]).trim());
}

const TICK_NS = 1e9 / 100; // USER_HZ

/** Busy and softirq ticks of the whole machine, and a process's own. */
function cpuTicks(pid: number | null): { busy: number; softirq: number; forwarder: number } {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  const busy = cpu.reduce((a, b) => a + b, 0) - cpu[3] - cpu[4];
  const procTicks = (path: string, fields: number[]) => {
    try {
      const stat = readFileSync(path, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from 3 (state) on
      return fields.reduce((a, f) => a + Number(rest[f - 3]), 0);
    } catch { return 0; }
  };
  return { busy, softirq: cpu[6], forwarder: pid === null ? 0 : procTicks(`/proc/${pid}/stat`, [14, 15]) };
}

function ppsRun(lab: Lab, cfg: string, devA: string, devB: string, seconds: number, forwarderPid: number | null): { pps: number; cpu: CpuCost } {
  const before = rxPackets('twb-b', devB);
  const cpu0 = cpuTicks(forwarderPid);
  try {
    execFileSync('ip', ['netns', 'exec', 'twb-a', 'timeout', '-s', 'INT', String(seconds), 'trafgen', '-o', devA, '-i', cfg, '-P', '1', '-q'], { stdio: 'ignore' });
  } catch { /* timeout ends trafgen with a non-zero status */ }
  execFileSync('sleep', ['0.3']);
  const cpu1 = cpuTicks(forwarderPid);
  const got = rxPackets('twb-b', devB) - before;
  const n = Math.max(1, got);
  const busy = cpu1.busy - cpu0.busy;
  return {
    pps: Math.round(got / seconds),
    cpu: {
      nsPerPacket: Math.round((busy * TICK_NS) / n),
      softirqNsPerPacket: Math.round(((cpu1.softirq - cpu0.softirq) * TICK_NS) / n),
      forwarderNsPerPacket: Math.round(((cpu1.forwarder - cpu0.forwarder) * TICK_NS) / n),
      packetsPerCpuSecond: busy > 0 ? Math.round(got / ((busy * TICK_NS) / 1e9)) : 0,
    },
  };
}

function tcpRun(lab: Lab, seconds: number): number {
  const server = spawn('ip', ['netns', 'exec', 'twb-b', 'iperf3', '-s', '-1', '-B', IP_B], { stdio: 'ignore' });
  lab.procs.push(server);
  execFileSync('sleep', ['0.5']);
  try {
    const out = execFileSync('ip', ['netns', 'exec', 'twb-a', 'iperf3', '-c', IP_B, '-t', String(seconds), '-J'], { encoding: 'utf8', timeout: (seconds + 10) * 1000 });
    const j = JSON.parse(out) as { end?: { sum_received?: { bits_per_second?: number } } };
    return Number(((j.end?.sum_received?.bits_per_second ?? 0) / 1e9).toFixed(2));
  } catch {
    return 0;
  } finally {
    if (server.exitCode === null) server.kill('SIGKILL');
  }
}

function bridgeTopology(lab: Lab): void {
  sh(['ip', 'link', 'add', 'twb-br0', 'type', 'bridge']);
  lab.links.push('twb-br0');
  lab.vethHost('twb-a', 'twb-a0', 'twb-a1', MAC_A, [`${IP_A}/24`], [], false);
  lab.vethHost('twb-b', 'twb-b0', 'twb-b1', MAC_B, [`${IP_B}/24`], [], false);
  sh(['ip', 'link', 'set', 'twb-a0', 'master', 'twb-br0']);
  sh(['ip', 'link', 'set', 'twb-b0', 'master', 'twb-br0']);
  sh(['ip', 'link', 'set', 'twb-br0', 'up']);
}

/**
 * Open vSwitch with its userspace datapath (this kernel has no openvswitch
 * module), its own ovsdb-server and ovs-vswitchd in a private run directory,
 * and a conntrack firewall as OpenFlow rules: untracked IP goes through ct(),
 * established and related pass, new connections meet the N rules (as
 * priorities: OVS's classifier is not a linear scan), the last allows and
 * commits. Returns a function that stops it all.
 */
function ovsStart(dir: string, rules: number): { stop: () => void; pid: () => number | null } {
  const run = join(dir, 'ovs');
  mkdirSync(run, { recursive: true });
  const env = { ...process.env, OVS_RUNDIR: run, OVS_DBDIR: run, OVS_LOGDIR: run, OVS_SYSCONFDIR: run };
  const x = (cmd: string[]) => execFileSync(cmd[0], cmd.slice(1), { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  const stop = () => {
    for (const name of ['ovs-vswitchd', 'ovsdb-server']) {
      try { process.kill(Number(readFileSync(join(run, `${name}.pid`), 'utf8')), 'SIGTERM'); } catch { /* not running */ }
    }
  };
  try {
    x(['ovsdb-tool', 'create', join(run, 'conf.db'), '/usr/share/openvswitch/vswitch.ovsschema']);
    x(['ovsdb-server', join(run, 'conf.db'), `--remote=punix:${join(run, 'db.sock')}`, `--pidfile=${join(run, 'ovsdb-server.pid')}`, '--detach', `--log-file=${join(run, 'ovsdb-server.log')}`]);
    x(['ovs-vsctl', `--db=unix:${join(run, 'db.sock')}`, '--no-wait', 'init']);
    x(['ovs-vswitchd', `unix:${join(run, 'db.sock')}`, `--pidfile=${join(run, 'ovs-vswitchd.pid')}`, '--detach', `--log-file=${join(run, 'ovs-vswitchd.log')}`]);
    const vsctl = (...a: string[]) => x(['ovs-vsctl', `--db=unix:${join(run, 'db.sock')}`, ...a]);
    vsctl('add-br', 'twb-ovs', '--', 'set', 'bridge', 'twb-ovs', 'datapath_type=netdev');
    vsctl('add-port', 'twb-ovs', 'twb-a0', '--', 'add-port', 'twb-ovs', 'twb-b0');
    const flows = [
      'table=0,priority=100,ip,ct_state=-trk,actions=ct(table=1)',
      'table=0,priority=10,arp,actions=NORMAL',
      'table=0,priority=0,actions=drop',
      'table=1,priority=65000,ip,ct_state=+trk+est,actions=NORMAL',
      'table=1,priority=65000,ip,ct_state=+trk+rel,actions=NORMAL',
    ];
    for (let i = 0; i < rules - 1; i++) flows.push(`table=1,priority=${60000 - (i % 50000)},udp,ct_state=+trk+new,nw_src=10.3.${(i >> 8) & 255}.${i & 255},tp_dst=${1000 + (i % 20000)},actions=drop`);
    flows.push('table=1,priority=1,ip,ct_state=+trk+new,nw_src=10.123.0.0/16,actions=ct(commit),NORMAL', 'table=1,priority=0,actions=drop');
    writeFileSync(join(run, 'flows.txt'), `${flows.join('\n')}\n`);
    // ovs-ofctl finds the bridge's management socket in OVS_RUNDIR.
    x(['ovs-ofctl', 'add-flows', 'twb-ovs', join(run, 'flows.txt')]);
  } catch (e) {
    stop();
    throw e;
  }
  return {
    stop: () => {
      try { x(['ovs-vsctl', `--db=unix:${join(run, 'db.sock')}`, '--if-exists', 'del-br', 'twb-ovs']); } catch { /* stopping anyway */ }
      stop();
    },
    pid: () => { try { return Number(readFileSync(join(run, 'ovs-vswitchd.pid'), 'utf8')); } catch { return null; } },
  };
}

function nftRules(rules: number, asSet = false): string {
  // The usual stateful layout: established traffic is accepted first, so only
  // a connection's first packet walks the linear rules (or, as a set, one lookup).
  const lines = ['table inet twbench {'];
  if (asSet && rules > 1) {
    lines.push('  set blocked {', '    type ipv4_addr . inet_service', '    elements = {');
    const el: string[] = [];
    for (let i = 0; i < rules - 1; i++) el.push(`      10.3.${(i >> 8) & 255}.${i & 255} . ${1000 + (i % 20000)}`);
    lines.push(el.join(',\n'), '    }', '  }');
  }
  lines.push('  chain forward {', '    type filter hook forward priority 0; policy drop;');
  lines.push('    ct state established,related accept');
  if (asSet && rules > 1) lines.push('    ip saddr . udp dport @blocked drop');
  else for (let i = 0; i < rules - 1; i++) lines.push(`    ip saddr 10.3.${(i >> 8) & 255}.${i & 255} udp dport ${1000 + (i % 20000)} drop`);
  lines.push('    ip saddr 10.123.0.0/16 accept');
  lines.push('    ip saddr 10.123.0.2 accept', '  }', '}');
  return lines.join('\n');
}

function tapwallPolicy(rules: number): string {
  const out = [
    'default: drop',
    'spoofguard: false   # the new-flows load comes from random sources in 10.123/16',
    'workloads:',
    `  a: { nic: twb-ta, mac: "${MAC_A}", ips: [${IP_A}] }`,
    `  b: { nic: twb-tb, mac: "${MAC_B}", ips: [${IP_B}] }`,
    'groups:',
    '  senders: { cidrs: [10.123.0.0/16] }',
    '  receiver: { workloads: [b] }',
    'sections:',
    '  - name: bench',
    '    rules:',
  ];
  for (let i = 0; i < rules - 1; i++) out.push(`      - { id: r${i}, from: 10.3.${(i >> 8) & 255}.${i & 255}/32, to: receiver, services: [udp/${1000 + (i % 20000)}], action: drop }`);
  out.push('      - { id: allow, from: senders, to: any, action: allow }');
  return `${out.join('\n')}\n`;
}

export async function benchE2e(opts: E2eOptions = {}): Promise<E2eResult> {
  const rules = opts.rules ?? 10_000;
  const seconds = opts.seconds ?? 5;
  const paths = new Set<E2ePath>(opts.paths ?? ['bridge', 'nft-linear', 'tapwall', 'tapwall-offload']);
  const full = opts.full ?? true;
  const rttSamples = opts.rttSamples ?? 0;
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  if (process.getuid?.() !== 0) throw new Error('bench e2e needs root (namespaces, TAPs, nftables)');
  need('trafgen', 'netsniff-ng');
  need('iperf3', 'iperf3');
  need('nft', 'nftables');
  need('ethtool', 'ethtool');
  const dir = mkdtempSync(join(tmpdir(), 'tw-e2e-'));
  const oneFlow = join(dir, 'one.cfg'), newFlows = join(dir, 'new.cfg');
  writeFileSync(oneFlow, trafgenConfig(false));
  writeFileSync(newFlows, trafgenConfig(true));
  const variants: E2eVariant[] = [];
  const measure = async (name: string, path: E2ePath, lab: Lab, devA: string, devB: string, forwarderPid: number | null = null) => {
    // Teach B's neighbour table A's MAC, so B's replies need no ARP round trip.
    sh(['ip', '-n', 'twb-b', 'neigh', 'replace', IP_A, 'lladdr', MAC_A, 'dev', devB]);
    sh(['ip', '-n', 'twb-a', 'neigh', 'replace', IP_B, 'lladdr', MAC_B, 'dev', devA]);
    const one = full ? ppsRun(lab, oneFlow, devA, devB, seconds, forwarderPid) : null;
    const fresh = ppsRun(lab, newFlows, devA, devB, seconds, forwarderPid);
    const r: E2eVariant = {
      name, path, rules: path === 'bridge' ? 0 : rules,
      oneFlowPps: one?.pps ?? 0, newFlowsPps: fresh.pps,
      ...(one ? { oneFlowCpu: one.cpu } : {}), newFlowsCpu: fresh.cpu,
      tcpGbps: full ? tcpRun(lab, seconds) : 0,
    };
    if (rttSamples > 0) {
      const echo = lab.spawnIn('twb-b', UDP_ECHO, ['7']);
      await new Promise<void>((resolve) => { echo.stdout!.on('data', () => resolve()); setTimeout(resolve, 3000); });
      const j = JSON.parse(lab.runIn('twb-a', RTT_PROBE, [IP_B, '7', String(rttSamples)], 60_000) || '{}') as { p50?: number; p90?: number; p99?: number; max?: number };
      if (j.p50 !== undefined) r.rttUs = { p50: Math.round(j.p50), p90: Math.round(j.p90!), p99: Math.round(j.p99!), max: Math.round(j.max!) };
      echo.kill('SIGKILL');
    }
    // One flow and TCP are measured only in a full run: say so rather than print 0.
    const extra = full ? `${r.oneFlowPps} pps one flow, ` : '';
    const tcp = full ? `, ${r.tcpGbps} Gbit/s TCP` : ' (one flow and TCP not measured in this run)';
    log(`${name}: ${extra}${r.newFlowsPps} pps new flows (${r.newFlowsCpu!.nsPerPacket} ns CPU per packet)${tcp}${r.rttUs ? `, UDP round trip p50 ${r.rttUs.p50} us p99 ${r.rttUs.p99} us` : ''}`);
    variants.push(r);
  };

  // 1. The bridge.
  let lab = new Lab();
  if (paths.has('bridge')) {
    try {
      bridgeTopology(lab);
      await measure('bridge', 'bridge', lab, 'twb-a1', 'twb-b1');
    } finally { lab.cleanup(); }
  }

  // 2. The bridge filtered by nftables: linear rules, and the same rules as one set.
  for (const asSet of [false, true]) {
    if (!paths.has(asSet ? 'nft-set' : 'nft-linear')) continue;
    lab = new Lab();
    const brnf = sh(['sysctl', '-n', 'net.bridge.bridge-nf-call-iptables'], { allowFail: true }).trim();
    try {
      bridgeTopology(lab);
      sh(['sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=1']);
      const nftFile = join(dir, 'rules.nft');
      writeFileSync(nftFile, nftRules(rules, asSet));
      sh(['nft', '-f', nftFile]);
      await measure(`nftables, ${rules} ${asSet ? 'rules as one set' : 'linear rules'}`, asSet ? 'nft-set' : 'nft-linear', lab, 'twb-a1', 'twb-b1');
    } finally {
      sh(['nft', 'delete', 'table', 'inet', 'twbench'], { allowFail: true });
      if (brnf !== '') sh(['sysctl', '-qw', `net.bridge.bridge-nf-call-iptables=${brnf}`], { allowFail: true });
      lab.cleanup();
    }
  }

  // 3. Open vSwitch, userspace datapath, conntrack firewall (when it installs and starts).
  const skipped: E2eResult['skipped'] = [];
  if (paths.has('ovs')) {
    lab = new Lab();
    let ovs: ReturnType<typeof ovsStart> | null = null;
    try {
      need('ovs-vswitchd', 'openvswitch-switch');
      // Its userspace datapath forwards correctly only with offloads off on the veths.
      lab.vethHost('twb-a', 'twb-a0', 'twb-a1', MAC_A, [`${IP_A}/24`]);
      lab.vethHost('twb-b', 'twb-b0', 'twb-b1', MAC_B, [`${IP_B}/24`]);
      ovs = ovsStart(dir, rules);
      await measure(`Open vSwitch userspace + conntrack, ${rules} rules`, 'ovs', lab, 'twb-a1', 'twb-b1', ovs.pid());
    } catch (e) {
      const why = `Open vSwitch could not be measured: ${((e as { stderr?: string }).stderr || (e as Error).message).split('\n')[0]}`;
      skipped.push({ path: 'ovs', why });
      log(why);
    } finally {
      ovs?.stop();
      lab.cleanup();
    }
  }

  // 4. tapwall, TAP ports without virtio-net headers (--no-offload); 5. with them, its default (checksum and TSO offload through).
  const policyFile = join(dir, 'policy.yaml');
  writeFileSync(policyFile, tapwallPolicy(rules));
  // 6. The default with a staged policy loaded beside (the same rules but the last, so every new connection disagrees):
  // what evaluating a staged policy on every flow-cache miss costs.
  const variantsOf: Array<{ path: E2ePath; offload: boolean; staged: boolean }> = [
    { path: 'tapwall', offload: false, staged: false }, { path: 'tapwall-offload', offload: true, staged: false }, { path: 'tapwall-staged', offload: true, staged: true },
  ];
  for (const { path, offload, staged } of variantsOf) {
    if (!paths.has(path)) continue;
    lab = new Lab();
    const socket = join(dir, 'api.sock');
    const args = [join(root, 'bin/tapwall.js'), 'run', '--config', policyFile, '--flow-capacity', '1048576', '--metrics', '127.0.0.1:0', '--state-dir', dir,
      ...(staged ? ['--api-socket', socket] : ['--no-api-socket']), ...(offload ? [] : ['--no-offload'])];
    const daemon = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'ignore'] });
    lab.procs.push(daemon);
    const nextLine = lineReader(daemon, 30_000);
    /** Frames received on all ports, and garbage collections so far (SIGUSR2). */
    const daemonStats = async (): Promise<{ rx: number; gc: number }> => {
      const line = nextLine();
      daemon.kill('SIGUSR2');
      const j = JSON.parse(await line) as { stats: Record<string, { rx: number }>; gc: number };
      return { rx: Object.values(j.stats).reduce((a, p) => a + p.rx, 0), gc: j.gc };
    };
    try {
      await nextLine();
      if (staged) {
        const text = tapwallPolicy(rules).replace(/ {6}- \{ id: allow,[^\n]*\n/, '      - { id: allow-staged, from: senders, to: any, action: allow }\n');
        await apiCall({ socket }, 'PUT', '/v1/policy/staged', text, { 'content-type': 'application/yaml' });
      }
      lab.host('twb-a', 'twb-ta', MAC_A, [`${IP_A}/24`]);
      lab.host('twb-b', 'twb-tb', MAC_B, [`${IP_B}/24`]);
      const before = await daemonStats();
      await measure(`tapwall${offload ? '' : ' --no-offload'}${staged ? ' with a staged policy' : ''}, ${rules} rules`, path, lab, 'twb-ta', 'twb-tb', daemon.pid ?? null);
      const after = await daemonStats();
      const rx = after.rx - before.rx;
      variants[variants.length - 1].gcPerMillionPackets = Number((((after.gc - before.gc) * 1e6) / Math.max(1, rx)).toFixed(2));
      log(`tapwall: ${after.gc - before.gc} garbage collections while it received ${rx} frames`);
    } finally {
      if (daemon.exitCode === null) daemon.kill('SIGTERM');
      lab.cleanup();
    }
  }

  const of = (p: E2ePath) => variants.find((v) => v.path === p);
  const bridge = of('bridge'), nft = of('nft-linear'), tw = of('tapwall'), twOffload = of('tapwall-offload');
  return {
    machine: machineInfo(), rules, seconds, variants,
    ratios: {
      tapwallVsBridgeOneFlow: tw && bridge ? Number((tw.oneFlowPps / Math.max(1, bridge.oneFlowPps)).toFixed(2)) : NaN,
      tapwallVsNftNewFlows: tw && nft ? Number((tw.newFlowsPps / Math.max(1, nft.newFlowsPps)).toFixed(1)) : NaN,
      tapwallTcpGbps: Math.max(tw?.tcpGbps ?? 0, twOffload?.tcpGbps ?? 0),
    },
    skipped,
  };
}

function cpuText(c: CpuCost | undefined): string {
  return c ? `${c.nsPerPacket} (${c.softirqNsPerPacket}, ${c.forwarderNsPerPacket})` : '-';
}

export function formatE2e(r: E2eResult): string {
  const m = r.machine;
  return [
    `machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.kernel}, Node.js ${m.node}`,
    `sender: trafgen on one core, 64-byte UDP; ${r.seconds} s per figure; policy size ${r.rules} rules`,
    'CPU: the whole machine\'s busy time per packet received, the sender\'s included (softirq: the kernel\'s share; process: tapwall\'s or ovs-vswitchd\'s own), and packets per CPU-second of it',
    '| path | one flow (pps) | CPU ns/pkt (softirq, process) | pkts per CPU-s | new flows (pps) | CPU ns/pkt (softirq, process) | pkts per CPU-s | TCP, one stream (Gbit/s) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
    ...r.variants.map((v) => `| ${v.name} | ${v.oneFlowPps} | ${cpuText(v.oneFlowCpu)} | ${v.oneFlowCpu?.packetsPerCpuSecond ?? '-'} | ${v.newFlowsPps} | ${cpuText(v.newFlowsCpu)} | ${v.newFlowsCpu?.packetsPerCpuSecond ?? '-'} | ${v.tcpGbps} |`),
    ...r.skipped.map((x) => `not measured: ${x.path}: ${x.why}`),
    `tapwall / bridge, one flow: ${r.ratios.tapwallVsBridgeOneFlow}`,
    `tapwall / nftables linear, new flows: ${r.ratios.tapwallVsNftNewFlows}x`,
    `tapwall garbage collections per million frames received: ${r.variants.filter((v) => v.path.startsWith('tapwall')).map((v) => v.gcPerMillionPackets).join(', ')}`,
  ].join('\n');
}
