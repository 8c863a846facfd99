/**
 * The tapwall command line. Exit codes: 0 success, 2 invalid input (a policy,
 * a packet description, a rule file), 1 anything else.
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { formatProblem, PolicyError, type PolicyProblem } from '../policy/errors.js';
import { policyLoad, policyParse } from '../policy/load.js';
import { policyCompile } from '../policy/compile.js';
import { formatTrace, parsePacketSpec, policyTrace, TraceSpecError } from '../control/trace.js';
import { trieBuild, trieLookup } from '../classify/ruleTrie.js';
import { dumpCompiled } from './dump.js';
import { ApiError, apiCall, formatFlows, formatRules, formatStatus, parseTagChanges, type ApiTarget } from './client.js';

/** An option's value as a whole number of at least `min` (commander says which option when it is not). */
function wholeAtLeast(min: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected a whole number of at least ${min}`);
    return n;
  };
}

const EXIT_INVALID = 2;
const DEFAULT_API_SOCKET = '/run/tapwall/api.sock';

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** Known input errors become a message and exit 2; anything else is a bug and exits 1 with its stack. */
function fail(e: unknown): never {
  if (e instanceof PolicyError) {
    for (const p of e.problems) process.stderr.write(`${formatProblem(p)}\n`);
    process.exit(EXIT_INVALID);
  }
  if (e instanceof TraceSpecError || (e as { code?: string } | null)?.code === 'CLASSBENCH_FORMAT') {
    process.stderr.write(`tapwall: ${(e as Error).message}\n`);
    process.exit(EXIT_INVALID);
  }
  const err = e as NodeJS.ErrnoException;
  if (e instanceof ApiError) {
    process.stderr.write(`${e.describe()}\n`);
    process.exit(e.status === 400 || e.status === 404 || e.status === 409 || e.status === 412 || e.status === 428 ? EXIT_INVALID : 1);
  }
  if (err?.code === 'EUSAGE') {
    process.stderr.write(`tapwall: ${err.message}\n`);
    process.exit(EXIT_INVALID);
  }
  if (err?.code === 'ENOENT' || err?.code === 'EACCES') {
    process.stderr.write(`tapwall: ${err.message}\n`);
    process.exit(EXIT_INVALID);
  }
  if (typeof err?.code === 'string' && /^E[A-Z_]+$/.test(err.code)) {
    // The system refused (no permission, no such interface, a TAP already owned): say so, no stack.
    process.stderr.write(`tapwall: ${err.message}\n`);
    process.exit(1);
  }
  process.stderr.write(`tapwall: internal error: ${err?.stack ?? String(e)}\n`);
  process.exit(1);
}

/** A command's action, with every failure turned into fail()'s message and exit code. */
function guarded<A extends unknown[]>(fn: (...args: A) => unknown): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (e) {
      fail(e);
    }
  };
}

const program = new Command();
/** --forwarding-cpu: a CPU number or auto. */
function forwardingCpu(v: string): number | 'auto' {
  if (v === 'auto') return 'auto';
  if (!/^\d+$/.test(v) || Number(v) > 1023) throw Object.assign(new Error(`--forwarding-cpu takes a CPU number (0-1023) or auto, not '${v}'`), { code: 'EUSAGE' });
  return Number(v);
}

program
  .name('tapwall')
  .description('A userspace distributed firewall for virtual machines: a stateful firewall on every vNIC.')
  .version(version())
  .showHelpAfterError();

program
  .command('check')
  .description('Validate a policy: report every problem with file, line, column and path, and warn about shadowed rules. Exits 0 when valid, 2 when not.')
  .argument('<policy>', 'policy file (YAML or JSON)')
  .option('--json', 'print the problems as JSON')
  .option('-q, --quiet', 'print only errors, not warnings or the summary')
  .action(guarded((file: string, opts: { json?: boolean; quiet?: boolean }) => {
    const text = readFileSync(file, 'utf8');
    const { policy, problems } = policyParse(text, file);
    const errors = problems.filter((p) => p.severity === 'error');
    if (opts.json) {
      process.stdout.write(`${JSON.stringify({ valid: policy !== null, problems }, null, 2)}\n`);
    } else {
      const shown: PolicyProblem[] = opts.quiet ? errors : problems;
      for (const p of shown) process.stdout.write(`${formatProblem(p)}\n`);
      if (!opts.quiet) {
        if (policy) {
          const rules = policy.sections.reduce((n, s) => n + s.rules.length, 0);
          const compiled = policyCompile(policy);
          process.stdout.write(
            `${file}: valid: ${policy.workloads.size} workloads, ${policy.groups.size} groups, ${policy.services.size} services, ` +
              `${policy.sections.length} sections, ${rules} rules (${compiled.stats.atoms} compiled entries); ${problems.length} warnings\n`,
          );
        } else process.stdout.write(`${file}: invalid: ${errors.length} errors, ${problems.length - errors.length} warnings\n`);
      }
    }
    process.exit(policy ? 0 : EXIT_INVALID);
  }));

program
  .command('trace')
  .description('Show what the policy does with one packet at each point it crosses, and why.')
  .argument('<policy>', 'policy file (YAML or JSON)')
  .argument('<packet>', "the packet, quoted: 'tcp 10.0.0.11:40000 -> 10.0.0.21:5432', 'udp [fd00::1]:5353 -> [fd00::2]:53', 'icmp 10.0.0.1 -> 10.0.0.2 echo-request', 'icmpv6 fd00::1 -> fd00::2 128/0', 'ip/47 10.0.0.1 -> 10.0.0.2'")
  .option('--from <workload>', 'the workload whose vNIC sends it (default: the owner of the source address)')
  .option('--to <workload>', 'the workload whose vNIC receives it (default: the owner of the destination address)')
  .option('--json', 'print the trace as JSON')
  .action(guarded(async (file: string, packet: string, opts: { from?: string; to?: string; json?: boolean }) => {
    const { policy } = policyLoad(file);
    const result = policyTrace(policyCompile(policy), parsePacketSpec(packet), { from: opts.from, to: opts.to });
    process.stdout.write(opts.json ? `${JSON.stringify(result, null, 2)}\n` : `${formatTrace(result)}\n`);
  }));

program
  .command('compile')
  .description('Compile a policy and show a pass of the compiler: resolved groups, the rules at each vNIC, or the compiled tables.')
  .argument('<policy>', 'policy file (YAML or JSON)')
  .addOption(new Option('--dump <pass>', 'what to show').choices(['groups', 'points', 'stats']).default('stats'))
  .action(guarded(async (file: string, opts: { dump: 'groups' | 'points' | 'stats' }) => {
    const { policy } = policyLoad(file);
    process.stdout.write(dumpCompiled(policyCompile(policy), opts.dump));
  }));

program
  .command('run')
  .description('Run the data plane: a stateful firewall on every workload vNIC of the policy, switching frames between them. SIGHUP reloads the policy, SIGTERM stops, SIGUSR2 prints counters.')
  .option('--config <file>', 'policy file (YAML or JSON): the single-host store')
  .option('--store <url>', 'etcd://HOST:PORT[,HOST:PORT...]: one policy for many hosts, from etcd (needs --host)')
  .option('--host <name>', "this hypervisor's name: it serves the workloads whose host is this")
  .option('--etcd-prefix <prefix>', 'key prefix in etcd', '/tapwall')
  .option('--etcd-ca <file>', 'CA certificate for etcd over TLS')
  .option('--etcd-cert <file>', 'client certificate for etcd')
  .option('--etcd-key <file>', 'client key for etcd')
  .addOption(new Option('--mode <mode>', 'how to reach the vNICs: open TAP devices, attach to existing interfaces with AF_PACKET, or through libpcap').choices(['tap', 'attach', 'pcap']).default('tap'))
  .option('--uplink <ifname>', 'an interface towards everything outside the workloads (attached with AF_PACKET)')
  .option('--loose', 'let out-of-state packets through and pick up connections mid-stream')
  .option('--flow-capacity <n>', 'most connections tracked at once', (v) => Number(v), 262144)
  .option('--no-compile-thread', 'validate and compile policy changes on the forwarding thread (by default a worker thread does it, at a lower CPU priority)')
  .option('--forwarding-cpu <cpu>', "keep a CPU for the forwarding thread: its number, or auto (the last one tapwall may use); tapwall's other threads (compiling, collector, I/O pool) run on the rest (default: the scheduler places every thread)", forwardingCpu)
  .option('--quota <n>', 'most connections one vNIC may hold (default: 2 x flow capacity / (vNICs + 1), re-derived as vNICs come and go)', (v) => Number(v))
  .option('--user <user>', 'once the ports are open, become this user (a name, or UID[:GID]) with only the capabilities its mode needs later (CAP_NET_RAW; tap mode also CAP_NET_ADMIN)')
  .option('--stats-every <seconds>', 'log counters this often', (v) => Number(v), 0)
  .option('--tap-persist', 'keep the TAP devices when tapwall exits (TUNSETPERSIST), as libvirt does')
  .option('--tap-owner <uid>', 'the user that may open the TAP devices (TUNSETOWNER)', (v) => Number(v))
  .option('--offload', 'virtio-net headers on every port (IFF_VNET_HDR, PACKET_VNET_HDR), so checksum and TSO offload pass through: the default in tap and attach modes (libpcap cannot carry them)')
  .option('--no-offload', 'no virtio-net headers: every frame whole, its checksums done, at most one MTU (the kernel segments and checksums before tapwall sees it)')
  .option('--metrics <host:port>', 'serve Prometheus metrics on http://HOST:PORT/metrics (loopback by default)', '127.0.0.1:9810')
  .option('--no-metrics', 'serve no metrics')
  .option('--state-dir <dir>', 'where the tags added at run time (tags.json) and the audit log (audit.jsonl) are kept', '/var/lib/tapwall')
  .option('--flow-state <file>', 'keep the flow table in this file (a shared mapping; tmpfs is best) so that a restart, even kill -9, resumes the open connections (default: /run/tapwall/flows.table with the default state folder, else STATE_DIR/flows.table)')
  .option('--no-flow-state', 'keep the flow table in memory only: a restart forgets every connection')
  .option('--api-socket <path>', 'serve the API on this Unix socket (mode 0600)', DEFAULT_API_SOCKET)
  .option('--no-api-socket', 'no API on a Unix socket')
  .option('--api-listen <host:port>', 'also serve the API on TCP; needs --api-token-file')
  .option('--api-token-file <file>', 'the bearer token TCP clients must send (at least 16 characters)')
  .option('--api-cert <file>', 'serve the TCP API over TLS with this certificate chain (PEM; with --api-key)')
  .option('--api-key <file>', 'the private key of --api-cert (PEM)')
  .option('--flow-log <file>', 'write flow log lines (JSON) here; SIGUSR1 reopens it')
  .option('--flow-log-stdout', 'write flow log lines to stdout')
  .option('--flow-log-rate <n>', 'most flow log lines per vNIC per second (twice that in a burst)', (v) => Number(v), 100)
  .action(guarded(async (opts: {
    config?: string; store?: string; host?: string; etcdPrefix?: string; etcdCa?: string; etcdCert?: string; etcdKey?: string; mode: 'tap' | 'attach' | 'pcap'; uplink?: string; loose?: boolean; flowCapacity: number; quota?: number; compileThread?: boolean; forwardingCpu?: number | 'auto'; statsEvery: number; user?: string;
    tapPersist?: boolean; tapOwner?: number; offload?: boolean; metrics?: string | false; stateDir: string; flowState?: string | false; apiSocket: string | false;
    apiListen?: string; apiTokenFile?: string; apiCert?: string; apiKey?: string; flowLog?: string; flowLogStdout?: boolean; flowLogRate: number;
  }) => {
    if (!opts.config && !opts.store) throw Object.assign(new Error('tapwall run needs --config FILE (one host) or --store etcd://... --host NAME (a cluster)'), { code: 'EUSAGE' });
    if (opts.config && opts.store) throw Object.assign(new Error('--config and --store exclude each other: load a file into etcd with tapwall policy apply FILE --store ...'), { code: 'EUSAGE' });
    const { runDaemon } = await import('./run.js');
    await runDaemon({
      ...opts, metrics: opts.metrics === false ? undefined : opts.metrics, apiSocket: opts.apiSocket === false ? null : opts.apiSocket, flowState: opts.flowState === false ? null : opts.flowState, version: version(),
    });
  }));

program
  .command('demo')
  .description('A small data center live: network namespaces as VMs on TAP devices and an internet peer behind an uplink, real traffic, a table refreshing every second, web-1 quarantined through the API midway and released later. Needs root; removes everything it creates.')
  .option('--policy <file>', 'the policy to run (default: examples/three-tier.yaml)')
  .option('--duration <seconds>', 'stop after this long (default: run until Ctrl-C)', (v) => Number(v))
  .action(guarded(async (opts: { policy?: string; duration?: number }) => {
    const { runDemo } = await import('../../tools/demo.js');
    await runDemo({ policy: opts.policy, duration: opts.duration ?? null });
    process.exit(0);
  }));


const classbench = program.command('classbench').description('Work with ClassBench rule sets and traces.');
classbench
  .command('match')
  .description('For each trace line, print the 0-based index of the first rule that matches its 5-tuple, or -1.')
  .argument('<rules>', 'ClassBench rule file')
  .argument('<trace>', 'ClassBench trace file')
  .action(guarded(async (rulesPath: string, tracePath: string) => {
    // The ClassBench reader is tooling (tools/), loaded only for this command.
    const { readClassbenchRules, readClassbenchTrace, CLASSBENCH_DIMS } = await import('../../tools/classbench.js');
    const rules = readClassbenchRules(rulesPath);
    const trace = readClassbenchTrace(tracePath);
    const t = trieBuild(CLASSBENCH_DIMS, rules.count, rules.lo, rules.hi);
    const out: string[] = new Array(trace.count);
    for (let i = 0; i < trace.count; i++) out[i] = String(trieLookup(t, trace.keys, i * CLASSBENCH_DIMS));
    process.stdout.write(out.length ? `${out.join('\n')}\n` : '');
  }));

classbench
  .command('scale')
  .description('Grow a larger ClassBench-like set (rules and trace) from a seed set; the procedure is documented in bench/classbench-scale.ts.')
  .argument('<seed-rules>', 'ClassBench rule file to grow from')
  .requiredOption('--rules <n>', 'how many rules to write', (v) => Number(v))
  .requiredOption('--out <prefix>', 'writes PREFIX.rules and PREFIX.trace')
  .option('--packets <n>', 'trace length', (v) => Number(v), 100_000)
  .option('--seed <n>', 'random seed (same seed, same output)', (v) => Number(v), 1)
  .action(guarded(async (seedRules: string, opts: { rules: number; out: string; packets: number; seed: number }) => {
    if (!(opts.rules > 0) || !(opts.packets >= 0)) throw new TraceSpecError('--rules must be a positive number and --packets a number');
    const { classbenchScale } = await import('../../bench/classbench-scale.js');
    const r = classbenchScale(seedRules, opts.rules, opts.packets, opts.out, opts.seed);
    process.stdout.write(`wrote ${r.rules} rules to ${r.rulesFile} and ${r.packets} packets to ${r.traceFile}\n`);
  }));

const bench = program.command('bench').description('Benchmarks (each reports ratios against a baseline measured in the same run, and the machine).');
bench
  .command('scale')
  .description('Data-center policy sizes (10,000 rules over 10,000 workloads; a group of 1,000,000 addresses against one of 100,000; 100,000 rules): load and validation time, shadow analysis, compile time and memory, lookups per second, tag-change compile time, and the longest forwarding gap of the real data plane during a full reload and a tag change.')
  .option('--case <list>', 'which policies (rules10k, groups1m, rules100k)', 'rules10k,groups1m,rules100k')
  .option('--json', 'print the results as JSON')
  .action(async (opts: { case: string; json?: boolean }) => {
    const { benchScale, formatScale } = await import('../../bench/scale.js');
    const cases = opts.case.split(',') as Array<'rules10k' | 'groups1m' | 'rules100k'>;
    const r = await benchScale({ cases }, (l) => { if (!opts.json) process.stderr.write(`${l}\n`); });
    process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatScale(r)}\n`);
  });

bench
  .command('cluster')
  .description('Many hosts on a real three-member etcd (started here on loopback): time for a new host to sync and enforce, a quarantine from the write to enforcement on every host (p50/p99/max), bytes etcd sends per change per host, memory per host; for 10, 50 and 100 host processes.')
  .option('--hosts <list>', 'host counts to run', '10,50,100')
  .option('--rules <n>', 'rules in the policy', wholeAtLeast(1), 200)
  .option('--workloads <n>', 'workloads in the inventory', wholeAtLeast(1), 500)
  .option('--changes <n>', 'quarantine changes per host count (the first is reported apart)', wholeAtLeast(2), 20)
  .option('--json', 'print the results as JSON')
  .action(async (opts: { hosts: string; rules: number; workloads: number; changes: number; json?: boolean }) => {
    const { benchCluster, formatCluster } = await import('../../bench/cluster.js');
    const r = await benchCluster({ hosts: opts.hosts.split(',').map(Number), rules: opts.rules, workloads: opts.workloads, changes: opts.changes }, (l) => { if (!opts.json) process.stderr.write(`${l}\n`); });
    process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatCluster(r)}\n`);
  });

bench
  .command('fuzz-policy')
  .description('Fuzz the policy loader: mutated YAML and JSON policies and hostile documents (alias bombs, deep nesting, long chains); fails if one throws or is refused without a located error.')
  .option('--docs <n>', 'how many documents', (v) => Number(v), 20_000)
  .option('--seed <n>', 'the seed (a failure replays with the same one)', (v) => Number(v), 1)
  .action(async (opts: { docs: number; seed: number }) => {
    const { fuzzPolicies, formatPolicyFuzz } = await import('../../bench/fuzz-policy.js');
    const r = fuzzPolicies({ documents: opts.docs, seed: opts.seed });
    process.stdout.write(`${formatPolicyFuzz(r)}\n`);
    if (r.problems.length > 0) process.exitCode = 1;
  });

bench
  .command('fuzz')
  .description('Fuzz the data plane: generated and mutated frames of every kind through in-memory ports under a one-service policy; fails if anything not allowed is forwarded or a counter does not add up.')
  .option('--frames <n>', 'how many frames', (v) => Number(v), 5_000_000)
  .option('--seed <n>', 'the seed (a failure replays with the same one)', (v) => Number(v), 1)
  .action(async (opts: { frames: number; seed: number }) => {
    const { fuzzFrames, formatFuzz } = await import('../../bench/fuzz.js');
    const r = fuzzFrames({ frames: opts.frames, seed: opts.seed });
    process.stdout.write(`${formatFuzz(r)}\n`);
    if (r.problems.length > 0 || r.unbalanced.length > 0) process.exitCode = 1;
  });

bench
  .command('classify')
  .description("The rule trie's lookups per second against a linear scan on the same packets, build time and compiled size.")
  .argument('<rules>', 'ClassBench rule file')
  .argument('<trace>', 'ClassBench trace file')
  .option('--json', 'print the result as JSON')
  .option('--rounds <n>', 'alternating rounds of trie and linear scan', (v) => Number(v), 5)
  .action(guarded(async (rulesPath: string, tracePath: string, opts: { json?: boolean; rounds: number }) => {
    const { benchClassify, formatClassifyBench } = await import('../../bench/classify.js');
    const r = await benchClassify(rulesPath, tracePath, { rounds: opts.rounds });
    process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatClassifyBench(r)}\n`);
  }));

bench
  .command('flow')
  .description('The flow cache and connection tracker from raw frames: hit-path packets per second against parsing alone, a Map cache and no cache; inserts; memory for a million connections; garbage collections.')
  .option('--json', 'print the result as JSON')
  .option('--quick', 'fewer flow counts and rounds')
  .action(guarded(async (opts: { json?: boolean; quick?: boolean }) => {
    const { benchFlow, formatFlowBench } = await import('../../bench/flow.js');
    const r = await benchFlow({ quick: opts.quick });
    process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatFlowBench(r)}\n`);
  }));

bench
  .command('e2e')
  .description('Packets per second (64-byte UDP, one flow and new flows) and single-stream TCP between two namespaces: through a Linux bridge, the bridge filtered by nftables (a linear chain, and the rules as one set), Open vSwitch\'s userspace datapath with conntrack, and tapwall (with --no-offload, and with its default virtio-net offload), each with the CPU time it cost per packet, in one run. Needs root; installs trafgen, iperf3, nft and Open vSwitch if missing.')
  .option('--json', 'print the result as JSON')
  .option('--rules <n>', 'policy size for every filtering path', (v) => Number(v), 10000)
  .option('--seconds <n>', 'length of each measurement', (v) => Number(v), 5)
  .option('--paths <list>', 'which paths, comma-separated (tapwall-staged: the default with a staged policy evaluated beside)', 'bridge,nft-linear,nft-set,ovs,tapwall,tapwall-offload')
  .action(guarded(async (opts: { json?: boolean; rules: number; seconds: number; paths: string }) => {
    const { benchE2e, formatE2e } = await import('../../bench/e2e.js');
    const known = ['bridge', 'nft-linear', 'nft-set', 'ovs', 'tapwall', 'tapwall-offload', 'tapwall-staged'] as const;
    const paths = opts.paths.split(',').map((p) => p.trim());
    const bad = paths.filter((p) => !(known as readonly string[]).includes(p));
    if (bad.length) throw Object.assign(new Error(`--paths: unknown ${bad.join(', ')}; known: ${known.join(', ')}`), { code: 'EUSAGE' });
    const r = await benchE2e({ rules: opts.rules, seconds: opts.seconds, paths: paths as Array<(typeof known)[number]> });
    process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatE2e(r)}\n`);
  }));

bench
  .command('report')
  .description('Every benchmark in one run (classifier, flow cache, quarantine, metrics overhead, end to end against the Linux bridge and nftables as a chain and as a set, round-trip latency), written to bench/results/REPORT.md with SVG charts. Needs root. --quick: under two minutes.')
  .option('--quick', 'fewer sizes and shorter rounds')
  .option('--out <dir>', 'where to write the report', 'bench/results')
  .action(guarded(async (opts: { quick?: boolean; out: string }) => {
    const { benchReport } = await import('../../bench/report.js');
    const file = await benchReport({ quick: opts.quick, out: opts.out });
    process.stdout.write(`${file}\n`);
  }));

bench
  .command('metrics')
  .description('What Prometheus metrics cost the data plane: forwarding rate on in-memory ports with metrics off, and on with a scrape every second, in alternating rounds.')
  .option('--rounds <n>', 'rounds of each condition', (v) => Number(v), 5)
  .option('--seconds <n>', 'length of each round', (v) => Number(v), 4)
  .option('--json', 'print the result as JSON')
  .addOption(new Option('--child <mode>', 'run one condition in this process (internal)').choices(['on', 'off']).hideHelp())
  .action(guarded(async (opts: { rounds: number; seconds: number; json?: boolean; child?: 'on' | 'off' }) => {
    const m = await import('../../bench/metrics-overhead.js');
    if (opts.child) {
      process.stdout.write(`${JSON.stringify(await m.metricsChild(opts.child === 'on', opts.seconds))}\n`);
      process.exit(0);
    }
    const r = await m.benchMetricsOverhead(opts);
    process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${m.formatMetricsOverhead(r)}\n`);
  }));

bench
  .command('quarantine')
  .description('How fast a quarantine tag cuts an open connection: the API call, and the time from its return to the first dropped packet, with 10,000 rules and 100,000 open connections (in one process, no root needed).')
  .option('--rules <n>', 'policy size', (v) => Number(v), 10000)
  .option('--flows <n>', 'open connections', (v) => Number(v), 100000)
  .option('--rounds <n>', 'quarantines measured', (v) => Number(v), 15)
  .option('--json', 'print the result as JSON')
  .action(guarded(async (opts: { rules: number; flows: number; rounds: number; json?: boolean }) => {
    const { benchQuarantine, formatQuarantine } = await import('../../bench/quarantine.js');
    const r = await benchQuarantine(opts);
    process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatQuarantine(r)}\n`);
  }));

bench
  .command('classify-scaling')
  .description('bench classify across rule-set sizes: the shipped 1k-4k ClassBench sets and 16k/64k sets grown from them.')
  .option('--quick', 'fewer sizes and shorter rounds')
  .option('--json', 'print the results as JSON after the table')
  .action(guarded(async (opts: { quick?: boolean; json?: boolean }) => {
    const { benchClassifyScaling } = await import('../../bench/classify-scaling.js');
    const results = await benchClassifyScaling({ quick: opts.quick });
    if (opts.json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
  }));

// The commands that talk to a running daemon through its API.
function apiOptions(cmd: Command): Command {
  return cmd
    .option('--api-socket <path>', "the daemon's API socket", DEFAULT_API_SOCKET)
    .option('--api <url>', 'a TCP API instead, like https://10.0.0.5:9811 (with --token-file)')
    .option('--token-file <file>', 'the bearer token for --api')
    .option('--api-ca <file>', "the CA certificate that signed an https:// API's certificate");
}
const apiTarget = (o: { apiSocket: string; api?: string; tokenFile?: string; apiCa?: string }): ApiTarget => ({ socket: o.apiSocket, url: o.api, tokenFile: o.tokenFile, caFile: o.apiCa });
type ApiOpts = { apiSocket: string; api?: string; tokenFile?: string; apiCa?: string; json?: boolean; store?: string; etcdPrefix?: string; etcdCa?: string; etcdCert?: string; etcdKey?: string };

// The commands that can also talk to the cluster store itself, from any machine.
function storeOptions(cmd: Command): Command {
  return cmd
    .option('--store <url>', 'etcd://HOST:PORT[,...]: the cluster store itself instead of a daemon')
    .option('--etcd-prefix <prefix>', 'key prefix in etcd', '/tapwall')
    .option('--etcd-ca <file>', 'CA certificate for etcd over TLS')
    .option('--etcd-cert <file>', 'client certificate for etcd')
    .option('--etcd-key <file>', 'client key for etcd');
}
const storeCli = (o: ApiOpts) => ({ store: o.store!, etcdPrefix: o.etcdPrefix, etcdCa: o.etcdCa, etcdCert: o.etcdCert, etcdKey: o.etcdKey });
const printJson = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

storeOptions(apiOptions(program
  .command('status')
  .description('Show the running daemon: version, policy generation and revision, ports and their drops, the last apply and error. With --store: the cluster (every host, alive or not, and the revision it enforces).')
  .option('--json', 'print the API answer as JSON')))
  .action(guarded(async (opts: ApiOpts) => {
    if (opts.store) {
      const { clusterHosts, formatHosts } = await import('./cluster.js');
      const r = await clusterHosts(storeCli(opts));
      if (opts.json) printJson(r); else process.stdout.write(`${formatHosts(r)}\n`);
      return;
    }
    const r = await apiCall(apiTarget(opts), 'GET', '/v1/status');
    if (opts.json) printJson(r.body); else process.stdout.write(`${formatStatus(r.body)}\n`);
  }));

storeOptions(apiOptions(program
  .command('tag')
  .description("Add or remove run-time tags on a workload: the policy follows at once (e.g. tapwall tag web-1 +quarantine --reason 'malware found' --ttl 1h). To remove, write -TAG after --, or ~TAG.")
  .argument('<workload>', 'the workload')
  .argument('<changes...>', '+TAG to add, ~TAG (or -TAG after --) to remove')
  .requiredOption('--reason <text>', 'why (goes to the audit log)')
  .option('--ttl <duration>', 'remove the added tags after this long: 90s, 15m, 1h, 2d')
  .option('--by <name>', 'who asks (goes to the audit log)')
  .option('--json', 'print the API answer as JSON')))
  .action(guarded(async (workload: string, changes: string[], opts: ApiOpts & { reason: string; ttl?: string; by?: string }) => {
    const body = { ...parseTagChanges(changes), reason: opts.reason, ttl: opts.ttl, by: opts.by };
    if (opts.store) {
      const { clusterTag } = await import('./cluster.js');
      const { parseTtl } = await import('../control/api.js');
      const ttlSeconds = opts.ttl === undefined ? null : parseTtl(opts.ttl);
      if (opts.ttl !== undefined && ttlSeconds === null) throw Object.assign(new Error(`--ttl: expected a duration like 90s, 15m, 1h or 2d (up to 366d), found '${opts.ttl}'`), { code: 'EUSAGE' });
      process.stdout.write(`${await clusterTag(storeCli(opts), workload, { add: body.add, remove: body.remove, reason: opts.reason, ttlSeconds, by: opts.by ?? `cli (${process.env.USER ?? 'unknown'})` })}\n`);
      return;
    }
    const r = await apiCall<{ tags: string[]; apply: { generation: number; compileMs: number; swapMs: number } }>(apiTarget(opts), 'POST', `/v1/workloads/${encodeURIComponent(workload)}/tags`, body);
    if (opts.json) printJson(r.body);
    else process.stdout.write(`${workload}: tags now ${r.body.tags.join(', ') || '(none)'}; policy generation ${r.body.apply.generation} in force (compiled in ${r.body.apply.compileMs.toFixed(1)} ms)\n`);
  }));

apiOptions(program
  .command('flows')
  .description('List tracked connections, with the rules that allowed them.')
  .option('--workload <name>', 'only connections to or from this workload')
  .option('--state <state>', 'only connections in this state (established, synSent, udpEstablished, cut, ...)')
  .option('--verdict <verdict>', 'allowed or cut')
  .option('--limit <n>', 'at most this many', '1000')
  .option('--json', 'print the API answer as JSON'))
  .action(guarded(async (opts: ApiOpts & { workload?: string; state?: string; verdict?: string; limit: string }) => {
    const q = new URLSearchParams({ limit: opts.limit });
    for (const k of ['workload', 'state', 'verdict'] as const) if (opts[k]) q.set(k, opts[k]!);
    const r = await apiCall<{ total: number; matched: number; flows: Array<Record<string, unknown>> }>(apiTarget(opts), 'GET', `/v1/flows?${q}`);
    if (opts.json) printJson(r.body); else process.stdout.write(`${formatFlows(r.body)}\n`);
  }));

apiOptions(program
  .command('rules')
  .description('Per-rule hit counts of the running policy (rules with hits, and the default); with --unused, the rules not hit since a time (kept across policy changes and restarts), to find rules that can go.')
  .option('--all', 'also the rules with no hits')
  .option('--unused <since>', 'only the rules never hit, or last hit before this: 7d, 12h, 30m, or an ISO time')
  .option('--json', 'print the API answer as JSON'))
  .action(guarded(async (opts: ApiOpts & { all?: boolean; unused?: string }) => {
    const r = await apiCall<Parameters<typeof formatRules>[0] & { since?: string }>(apiTarget(opts), 'GET', `/v1/rules${opts.unused ? `?unused=${encodeURIComponent(opts.unused)}` : ''}`);
    if (opts.json) { printJson(r.body); return; }
    if (opts.unused) {
      const rows = r.body.rules.map((x) => `${x.section}/${x.id} (${x.action}): ${x.lastHit ? `last hit ${x.lastHit}` : 'never hit'}`);
      process.stdout.write(`${rows.length} rules not hit since ${r.body.since}${rows.length ? `:\n${rows.join('\n')}` : ''}\n`);
      return;
    }
    process.stdout.write(`${formatRules(r.body, opts.all ?? false)}\n`);
  }));

/** The revision a change must still find in force: --if-revision, or the one read just before. */
async function enforcedRevision(target: ReturnType<typeof apiTarget>, ifRevision: string | undefined): Promise<string> {
  return ifRevision ?? String((await apiCall<{ revision: number }>(target, 'GET', '/v1/policy')).body.revision);
}

/** --by and --reason as a change's JSON body carries them. */
function whoAndWhy(opts: { by?: string; reason?: string }): { by?: string; reason?: string } {
  return { ...(opts.by ? { by: opts.by } : {}), ...(opts.reason ? { reason: opts.reason } : {}) };
}

/** --by and --reason as headers (for a change whose body is the policy text). */
function whoAndWhyHeaders(opts: { by?: string; reason?: string }): Record<string, string> {
  return { ...(opts.by ? { 'x-tapwall-actor': opts.by } : {}), ...(opts.reason ? { 'x-tapwall-reason': opts.reason } : {}) };
}

const policyCmd = program.command('policy').description("Read or replace the running daemon's policy.");
storeOptions(apiOptions(policyCmd
  .command('get')
  .description('Print the policy in force (its revision goes to stderr).')))
  .action(guarded(async (opts: ApiOpts) => {
    if (opts.store) {
      const { clusterGet } = await import('./cluster.js');
      const r = await clusterGet(storeCli(opts));
      process.stderr.write(`revision ${r.revision}\n`);
      process.stdout.write(r.text);
      return;
    }
    const r = await apiCall<{ revision: number; text: string }>(apiTarget(opts), 'GET', '/v1/policy');
    process.stderr.write(`revision ${r.body.revision}\n`);
    process.stdout.write(r.body.text);
  }));
storeOptions(apiOptions(policyCmd
  .command('apply')
  .description('Validate, compile and swap in a new policy without dropping established connections that it still allows. Refused if the policy changed since --if-revision (default: the revision read just before).')
  .argument('<file>', 'policy file (YAML or JSON)')
  .option('--if-revision <n>', 'apply only if the running policy is still at this revision')
  .option('--by <name>', 'who applies it (goes to the audit log)')
  .option('--reason <text>', 'why (goes to the audit log and the policy history)')
  .option('--json', 'print the API answer as JSON')))
  .action(guarded(async (file: string, opts: ApiOpts & { ifRevision?: string; by?: string; reason?: string }) => {
    if (opts.store) {
      const { clusterApply } = await import('./cluster.js');
      process.stdout.write(`${await clusterApply(storeCli(opts), file, opts.ifRevision)}\n`);
      return;
    }
    const text = readFileSync(file, 'utf8');
    const target = apiTarget(opts);
    const rev = await enforcedRevision(target, opts.ifRevision);
    const headers: Record<string, string> = { 'if-match': `"${rev}"`, 'content-type': 'application/yaml' };
    Object.assign(headers, whoAndWhyHeaders(opts));
    const r = await apiCall<{ revision: number; generation: number; loadMs: number | null; compileMs: number; reused: number; rules: number }>(target, 'PUT', '/v1/policy', text, headers);
    if (opts.json) { printJson(r.body); return; }
    const loaded = r.body.loadMs === null ? '' : `loaded and validated in ${r.body.loadMs.toFixed(1)} ms, `;
    process.stdout.write(`applied: revision ${r.body.revision}, generation ${r.body.generation}, ${r.body.rules} rules, ${loaded}compiled in ${r.body.compileMs.toFixed(1)} ms (${r.body.reused} section tables reused); 'tapwall check' lists shadowed rules\n`);
  }));

apiOptions(policyCmd
  .command('whatif')
  .description('Replay connections that really happened against a candidate policy, before anything is staged or applied: the decisions in a flow log (--flows) and the connections open now (--live, through the API), and list those whose verdict would change, by the candidate rule that decides them.')
  .argument('<candidate>', 'candidate policy file (YAML or JSON)')
  .option('--flows <file>', "a flow log (tapwall run --flow-log): its decision events")
  .option('--live', "also the daemon's open connections (GET /v1/flows)")
  .option('--json', 'print the result as JSON'))
  .action(guarded(async (file: string, opts: ApiOpts & { flows?: string; live?: boolean; json?: boolean }) => {
    if (!opts.flows && !opts.live) throw Object.assign(new Error('give a flow log (--flows FILE), --live, or both'), { code: 'EUSAGE' });
    const { connectionsFromFlowLog, formatWhatIf, whatIf } = await import('../control/whatif.js');
    const { policy } = policyLoad(file);
    const candidate = policyCompile(policy);
    const skipped: Parameters<typeof whatIf>[2] = [];
    const recorded = opts.flows ? connectionsFromFlowLog(readFileSync(opts.flows, 'utf8'), skipped) : [];
    if (opts.live) {
      const r = await apiCall<{ flows: Array<{ proto: string; src: string; sport: number; dst: string; dport: number; from: string | null; to: string | null; verdict: string; egressRule: unknown; ingressRule: unknown }> }>(apiTarget(opts), 'GET', '/v1/flows?limit=10000');
      for (const f of r.body.flows) {
        const rule = (f.ingressRule ?? f.egressRule) as { section: string; id: string } | 'default' | null;
        recorded.push({ proto: f.proto, src: f.src, sport: f.sport, dst: f.dst, dport: f.dport, from: f.from, to: f.to,
          verdict: f.verdict === 'allowed' ? 'allow' : 'drop', section: rule && rule !== 'default' ? rule.section : null, rule: rule === 'default' ? 'default' : rule?.id ?? null });
      }
    }
    const result = whatIf(candidate, recorded, skipped);
    if (opts.json) { printJson(result); return; }
    process.stdout.write(`${formatWhatIf(result)}\n`);
  }));
interface HistoryEntryView { id: number; at: string; by: string; reason?: string; revision: number; rules: number; bytes: number; sha256: string }
apiOptions(policyCmd
  .command('history')
  .description('The policy versions this daemon put in force, newest first (kept in its state folder): id, when, by whom, store revision, rules.')
  .option('--json', 'print the API answer as JSON'))
  .action(guarded(async (opts: ApiOpts & { json?: boolean }) => {
    const r = await apiCall<{ entries: HistoryEntryView[] }>(apiTarget(opts), 'GET', '/v1/policy/history');
    if (opts.json) { printJson(r.body); return; }
    const lines = ['ID     WHEN                      REVISION  RULES  BY'];
    for (const e of r.body.entries) lines.push(`${String(e.id).padEnd(6)} ${e.at.padEnd(25)} ${String(e.revision).padEnd(9)} ${String(e.rules).padEnd(6)} ${e.by}${e.reason ? `: ${e.reason}` : ''}`);
    process.stdout.write(`${lines.join('\n')}\n`);
  }));
apiOptions(policyCmd
  .command('show')
  .description('Print one kept policy version as it was applied.')
  .argument('<id>', 'history entry id (tapwall policy history)'))
  .action(guarded(async (id: string, opts: ApiOpts) => {
    const r = await apiCall<HistoryEntryView & { text: string }>(apiTarget(opts), 'GET', `/v1/policy/history/${encodeURIComponent(id)}`);
    process.stderr.write(`#${r.body.id}: ${r.body.at} by ${r.body.by}, revision ${r.body.revision}\n`);
    process.stdout.write(r.body.text);
  }));
apiOptions(policyCmd
  .command('diff')
  .description('With no ids: where the staged policy disagrees with the enforced one (per staged rule: would deny, would allow, decided by another rule) and the latest examples. With ids: rule-level differences between two kept versions (or one and the policy in force): added, removed, moved and changed rules.')
  .argument('[from]', 'history entry id')
  .argument('[to]', 'history entry id (default: the policy in force)')
  .option('--json', 'print the API answer as JSON'))
  .action(guarded(async (from: string | undefined, to: string | undefined, opts: ApiOpts & { json?: boolean }) => {
    if (from === undefined) {
      const r = await apiCall<{ stagedRevision: number; text: string | null; disagreements: Array<Record<string, unknown>>; examples: Array<Record<string, any>> }>(apiTarget(opts), 'GET', '/v1/policy/staged');
      if (opts.json) { printJson(r.body); return; }
      if (r.body.text === null) { process.stdout.write('no policy is staged\n'); return; }
      const lines = [`staged revision ${r.body.stagedRevision}`, 'STAGED RULE                      ACTION  WOULD-DENY  WOULD-ALLOW  OTHER-RULE'];
      for (const d of r.body.disagreements) {
        const name = `${d.section ? `${d.section}/` : ''}${d.rule}`;
        lines.push(`${name.padEnd(32)} ${String(d.action).padEnd(7)} ${String(d['would-deny'] ?? 0).padEnd(11)} ${String(d['would-allow'] ?? 0).padEnd(12)} ${d['other-rule'] ?? 0}`);
      }
      if (r.body.disagreements.length === 0) lines.push('(no disagreement on any new connection so far)');
      for (const e of r.body.examples.slice(0, 10)) lines.push(`  ${e.time} ${e.proto} ${e.src}:${e.sport} -> ${e.dst}:${e.dport}: ${e.kind}, now ${e.enforced.verdict} by ${e.enforced.rule}, staged ${e.staged.rule}`);
      process.stdout.write(`${lines.join('\n')}\n`);
      return;
    }
    const { formatPolicyDiff } = await import('../control/history.js');
    const q = `from=${encodeURIComponent(from)}${to === undefined ? '' : `&to=${encodeURIComponent(to)}`}`;
    const r = await apiCall<Parameters<typeof formatPolicyDiff>[0] & { from: number; to: number | string }>(apiTarget(opts), 'GET', `/v1/policy/diff?${q}`);
    if (opts.json) { printJson(r.body); return; }
    process.stdout.write(`#${r.body.from} -> ${typeof r.body.to === 'number' ? `#${r.body.to}` : 'the policy in force'}\n${formatPolicyDiff(r.body)}\n`);
  }));
apiOptions(policyCmd
  .command('stage')
  .description('Evaluate a policy beside the enforced one on every new connection, never enforcing it: disagreements are counted per staged rule (tapwall_staged_disagreements_total), flow-logged as "staged" and shown by `tapwall policy diff`.')
  .argument('<file>', 'policy file (YAML or JSON)')
  .option('--by <name>', 'who stages it (goes to the audit log)')
  .option('--reason <text>', 'why (goes to the audit log)'))
  .action(guarded(async (file: string, opts: ApiOpts & { by?: string; reason?: string }) => {
    const headers: Record<string, string> = { 'content-type': 'application/yaml' };
    Object.assign(headers, whoAndWhyHeaders(opts));
    const r = await apiCall<{ stagedRevision: number; rules: number }>(apiTarget(opts), 'PUT', '/v1/policy/staged', readFileSync(file, 'utf8'), headers);
    process.stdout.write(`staged: revision ${r.body.stagedRevision}, ${r.body.rules} rules; 'tapwall policy diff' shows where it disagrees\n`);
  }));
apiOptions(policyCmd
  .command('unstage')
  .description('Stop evaluating the staged policy.'))
  .action(guarded(async (opts: ApiOpts) => {
    await apiCall(apiTarget(opts), 'DELETE', '/v1/policy/staged');
    process.stdout.write('nothing is staged now\n');
  }));
apiOptions(policyCmd
  .command('promote')
  .description('Make the staged policy the enforced one in one step: refused if either the enforced or the staged policy changed since they were read just before (or since --if-revision / --if-staged).')
  .option('--if-revision <n>', 'the enforced revision it must still be at')
  .option('--if-staged <n>', 'the staged revision it must still be at')
  .option('--by <name>', 'who promotes it (goes to the audit log)')
  .option('--reason <text>', 'why (goes to the audit log and the policy history)'))
  .action(guarded(async (opts: ApiOpts & { ifRevision?: string; ifStaged?: string; by?: string; reason?: string }) => {
    const target = apiTarget(opts);
    const rev = await enforcedRevision(target, opts.ifRevision);
    const staged = Number(opts.ifStaged ?? (await apiCall<{ stagedRevision: number }>(target, 'GET', '/v1/policy/staged')).body.stagedRevision);
    const r = await apiCall<{ revision: number; generation: number; rules: number }>(target, 'POST', '/v1/policy/promote',
      JSON.stringify({ stagedRevision: staged, ...whoAndWhy(opts) }), { 'if-match': `"${rev}"`, 'content-type': 'application/json' });
    process.stdout.write(`promoted staged #${staged}: revision ${r.body.revision}, generation ${r.body.generation}, ${r.body.rules} rules\n`);
  }));
apiOptions(policyCmd
  .command('rollback')
  .description('Put a kept version in force again: an ordinary apply (validated, compare-and-set against the revision read just before, audited).')
  .argument('<id>', 'history entry id')
  .option('--if-revision <n>', 'roll back only if the running policy is still at this revision')
  .option('--by <name>', 'who rolls back (goes to the audit log)')
  .option('--reason <text>', 'why (goes to the audit log and the policy history)'))
  .action(guarded(async (id: string, opts: ApiOpts & { ifRevision?: string; by?: string; reason?: string }) => {
    const target = apiTarget(opts);
    const rev = await enforcedRevision(target, opts.ifRevision);
    const r = await apiCall<{ revision: number; generation: number; rules: number }>(target, 'POST', '/v1/policy/rollback',
      JSON.stringify({ id: Number(id), ...whoAndWhy(opts) }), { 'if-match': `"${rev}"`, 'content-type': 'application/json' });
    process.stdout.write(`rolled back to #${id}: revision ${r.body.revision}, generation ${r.body.generation}, ${r.body.rules} rules\n`);
  }));

storeOptions(program
  .command('libvirt-hook')
  .description("libvirt's QEMU hook (/etc/libvirt/hooks/qemu): with the domain XML on standard input, registers the domain's vNICs as workloads of this host when it starts, and removes them when it stops. See deploy/libvirt-qemu-hook.")
  .argument('<domain>', 'the domain name (libvirt passes it)')
  .argument('<operation>', 'prepare, start, started, stopped, release, ... (libvirt passes it)')
  .argument('[sub]', 'the sub-operation (libvirt passes it)')
  .argument('[extra]', 'extra argument (libvirt passes it)')
  .requiredOption('--host <name>', "this hypervisor's name, as its tapwall daemon's --host"))
  .action(guarded(async (domain: string, operation: string, _sub: string | undefined, _extra: string | undefined, opts: ApiOpts & { host: string }) => {
    if (!opts.store) throw Object.assign(new Error('tapwall libvirt-hook needs --store etcd://...'), { code: 'EUSAGE' });
    const { domainVnics, hookAction } = await import('../control/libvirt.js');
    const action = hookAction(operation);
    if (action === 'none') return;
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    const { domain: named, vnics } = domainVnics(Buffer.concat(chunks).toString('utf8'));
    if (named !== domain) throw Object.assign(new Error(`the XML describes domain '${named}', libvirt named '${domain}'`), { code: 'EUSAGE' });
    const { storeOpen } = await import('./cluster.js');
    const store = await storeOpen(storeCli(opts));
    try {
      for (const v of vnics) {
        if (action === 'register') {
          await store.putWorkload(v.name, { nic: v.nic, mac: v.mac, ips: v.ips, tags: v.tags, host: opts.host });
          process.stdout.write(`registered ${v.name}: ${v.nic} ${v.mac} ${v.ips.join(' ')} on ${opts.host}\n`);
        } else if (await store.deleteWorkloadOn(v.name, opts.host)) process.stdout.write(`removed ${v.name} from ${opts.host}\n`);
        else process.stdout.write(`kept ${v.name}: it is not (or no longer) on ${opts.host}\n`);
      }
    } finally {
      await store.close();
    }
  }));

storeOptions(program
  .command('hosts')
  .description('The hosts of a cluster: each one alive or not (its lease in etcd), its vNICs, the policy revision it enforces and how far behind it is.')
  .option('--json', 'print as JSON'))
  .action(guarded(async (opts: ApiOpts) => {
    if (!opts.store) throw Object.assign(new Error('tapwall hosts needs --store etcd://...'), { code: 'EUSAGE' });
    const { clusterHosts, formatHosts } = await import('./cluster.js');
    const r = await clusterHosts(storeCli(opts));
    if (opts.json) printJson(r); else process.stdout.write(`${formatHosts(r)}\n`);
  }));

program.parseAsync(process.argv).catch(fail);
