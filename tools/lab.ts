/**
 * Hosts for tests, benchmarks and the demo: network namespaces with real kernel TCP/IP stacks, named with
 * the `tw` prefix, removed at the end (also on failure) by `cleanup()`.
 * Traffic only ever goes between these namespaces.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export function sh(cmd: string[], opts: { allowFail?: boolean } = {}): string {
  try {
    return execFileSync(cmd[0], cmd.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    if (opts.allowFail) return '';
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd.join(' ')}: ${err.stderr || err.message}`);
  }
}

export class Lab {
  readonly namespaces: string[] = [];
  readonly links: string[] = [];
  readonly procs: ChildProcess[] = [];

  /**
   * A namespace holding `dev` (already created, in the root namespace) as its NIC. With `ipv6: false` the
   * NIC has no IPv6 at all (no link-local address, no router solicitation or MLD report when it comes up):
   * for tests that count every frame a VM sends.
   */
  host(ns: string, dev: string, mac: string, v4: string[], v6: string[] = [], opts: { ipv6?: boolean } = {}): void {
    if (ns.length > 15 || !ns.startsWith('tw')) throw new Error(`test namespaces are named tw..., at most 15 characters: ${ns}`);
    sh(['ip', 'netns', 'add', ns]);
    this.namespaces.push(ns);
    sh(['ip', 'link', 'set', dev, 'netns', ns]);
    if (opts.ipv6 === false) sh(['ip', 'netns', 'exec', ns, 'sysctl', '-qw', `net.ipv6.conf.${dev}.disable_ipv6=1`]);
    sh(['ip', '-n', ns, 'link', 'set', dev, 'address', mac]);
    for (const a of v4) sh(['ip', '-n', ns, 'addr', 'add', a, 'dev', dev]);
    for (const a of v6) sh(['ip', '-n', ns, 'addr', 'add', a, 'dev', dev, 'nodad']);
    sh(['ip', '-n', ns, 'link', 'set', dev, 'up']);
    sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  }

  /**
   * A namespace whose NIC is one end of a veth pair; the other end (`hostSide`)
   * stays in the root namespace for tapwall to attach to. Checksum and
   * segmentation offloads are turned off on both ends unless asked otherwise:
   * tapwall's AF_PACKET path moves whole, checksummed frames (it does not yet
   * use PACKET_VNET_HDR). Kernel-only baselines (a bridge) keep them on.
   */
  vethHost(ns: string, hostSide: string, peer: string, mac: string, v4: string[], v6: string[] = [], offloadsOff = true): void {
    if (hostSide.length > 15 || !hostSide.startsWith('tw') || peer.length > 15 || !peer.startsWith('tw')) throw new Error(`test links are named tw..., at most 15 characters`);
    sh(['ip', 'link', 'add', hostSide, 'type', 'veth', 'peer', 'name', peer]);
    this.links.push(hostSide);
    if (offloadsOff) for (const dev of [hostSide, peer]) sh(['ethtool', '-K', dev, 'tx', 'off', 'rx', 'off', 'tso', 'off', 'gso', 'off', 'gro', 'off'], { allowFail: true });
    // The host side carries no addresses of its own: no IPv6 autoconfiguration leaking into the "VM".
    sh(['sysctl', '-qw', `net.ipv6.conf.${hostSide}.disable_ipv6=1`], { allowFail: true });
    sh(['ip', 'link', 'set', hostSide, 'up']);
    this.host(ns, peer, mac, v4, v6);
  }

  /** Run a Node.js script inside a namespace, in the background. */
  spawnIn(ns: string, script: string, args: string[] = []): ChildProcess {
    const p = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.procs.push(p);
    return p;
  }

  /** Run a Node.js script inside a namespace and return its stdout (bounded in time). */
  runIn(ns: string, script: string, args: string[] = [], timeoutMs = 10_000): string {
    try {
      return execFileSync('ip', ['netns', 'exec', ns, process.execPath, '-e', script, ...args], { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    } catch (e) {
      const err = e as { stdout?: string };
      return (err.stdout ?? '').trim() || 'failed';
    }
  }

  cleanup(): void {
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGKILL');
    for (const ns of this.namespaces) sh(['ip', 'netns', 'del', ns], { allowFail: true });
    for (const l of this.links) sh(['ip', 'link', 'del', l], { allowFail: true });
  }
}

/**
 * The lines a child writes to stdout, in order, one per call (a daemon's
 * ready line, its answers to signals). Lines that arrive before they are
 * asked for wait in a queue; a call that waits longer than timeoutMs fails.
 */
export function lineReader(p: ChildProcess, timeoutMs = 15_000): () => Promise<string> {
  const queue: string[] = [];
  const waiters: Array<(line: string) => void> = [];
  createInterface({ input: p.stdout! }).on('line', (l) => {
    const w = waiters.shift();
    if (w) w(l); else queue.push(l);
  });
  return () => new Promise((resolve, reject) => {
    const v = queue.shift();
    if (v !== undefined) return resolve(v);
    const timer = setTimeout(() => reject(new Error(`no line from the process within ${timeoutMs} ms`)), timeoutMs);
    waiters.push((x) => { clearTimeout(timer); resolve(x); });
  });
}

/** A TCP client: prints ok:<first line>, refused, timeout or error:<code>. Args: host port timeoutMs [localAddress]. */
export const TCP_CLIENT = `
const [host, port, ms, local] = process.argv.slice(1);
const s = require('net').connect({ host, port: Number(port), localAddress: local || undefined });
const t = setTimeout(() => { console.log('timeout'); process.exit(0); }, Number(ms));
s.on('data', (d) => { console.log('ok:' + String(d).trim()); clearTimeout(t); s.destroy(); process.exit(0); });
s.on('error', (e) => { console.log(e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET' ? 'refused' : 'error:' + e.code); clearTimeout(t); process.exit(0); });
`;

/**
 * Servers for the "VMs": on each port given, TCP that sends the server's name
 * as its first line and then echoes what it receives, and a UDP echo. Prints
 * ready when all listen. Lives as long as the process that started it (at
 * most an hour). Args: name port...
 */
export const SERVERS = `
const [name, ...ports] = process.argv.slice(1);
const net = require('net'), dgram = require('dgram');
let up = 0;
const listening = () => { if (++up === ports.length * 2) console.log('ready'); };
for (const p of ports) {
  net.createServer((s) => { s.write(name + '\\n'); s.on('data', (d) => s.write(d)); s.on('error', () => {}); }).listen(Number(p), '::', listening);
  const u = dgram.createSocket({ type: 'udp6' });
  u.on('message', (m, r) => u.send(m, r.port, r.address));
  u.bind(Number(p), '::', listening);
}
const parent = process.ppid;
setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 1000);
setTimeout(() => process.exit(0), 3600000);
`;

/** A UDP client: sends one datagram (of `size` bytes) and prints ok when the whole echo comes back, or timeout. Args: host port timeoutMs [size] */
export const UDP_CLIENT = `
const [host, port, ms, size] = process.argv.slice(1);
const n = Number(size || 2);
const u = require('dgram').createSocket(host.includes(':') ? 'udp6' : 'udp4');
const t = setTimeout(() => { console.log('timeout'); process.exit(0); }, Number(ms));
u.on('message', (m) => { console.log(m.length === n ? 'ok' : 'short:' + m.length); clearTimeout(t); process.exit(0); });
u.send(Buffer.alloc(n, 120), Number(port), host);
`;

/**
 * A long-lived TCP connection: sends a numbered line every intervalMs for
 * durationMs and prints one line per event: "echo N S T" (S: when line N was
 * written, T: when its echo came; the server's greeting is "echo NAME T"),
 * "error CODE T", "close T" (times from Date.now()), then "done". Args: host
 * port intervalMs durationMs
 */
export const TCP_STREAM = `
const [host, port, every, ms] = process.argv.slice(1).map((v, i) => (i === 0 ? v : Number(v)));
const s = require('net').connect({ host, port });
let n = 0, buf = '';
const timer = setInterval(() => { if (!s.destroyed) s.write((n++) + ' ' + Date.now() + '\\n'); }, every);
s.on('data', (d) => { buf += d; let i; while ((i = buf.indexOf('\\n')) >= 0) { console.log('echo ' + buf.slice(0, i) + ' ' + Date.now()); buf = buf.slice(i + 1); } });
s.on('error', (e) => console.log('error ' + e.code + ' ' + Date.now()));
s.on('close', () => console.log('close ' + Date.now()));
setTimeout(() => { clearInterval(timer); s.destroy(); console.log('done'); process.exit(0); }, ms);
`;

/** UDP datagrams numbered 0..count-1, one every intervalMs; prints "echoed K of N" after a grace period. Args: host port count intervalMs */
export const UDP_STREAM = `
const [host, port, count, every] = process.argv.slice(1).map((v, i) => (i === 0 ? v : Number(v)));
const u = require('dgram').createSocket(host.includes(':') ? 'udp6' : 'udp4');
const seen = new Set();
u.on('message', (m) => seen.add(m.readUInt32BE(0)));
let i = 0;
const timer = setInterval(() => {
  const b = Buffer.alloc(64); b.writeUInt32BE(i, 0); u.send(b, port, host);
  if (++i === count) { clearInterval(timer); setTimeout(() => { console.log('echoed ' + seen.size + ' of ' + count); process.exit(0); }, 1000); }
}, every);
`;

/**
 * A bulk TCP transfer to one of SERVERS: sends `bytes` in large writes (with
 * offload on, the kernel hands these to the NIC as segments of up to 64 KiB)
 * and prints "echoed N of M" once the echo is complete, or when timeoutMs
 * ran out. Args: host port bytes timeoutMs
 */
export const TCP_BULK = `
const [host, port, bytes, ms] = process.argv.slice(1).map((v, i) => (i === 0 ? v : Number(v)));
const s = require('net').connect({ host, port });
let head = true, got = 0;
const done = () => { console.log('echoed ' + got + ' of ' + bytes); process.exit(0); };
const t = setTimeout(done, ms);
s.on('connect', () => { for (let sent = 0; sent < bytes; sent += 65536) s.write(Buffer.alloc(Math.min(65536, bytes - sent), 97)); });
s.on('data', (d) => {
  if (head) { const i = d.indexOf(10); if (i < 0) return; head = false; d = d.subarray(i + 1); }
  got += d.length;
  if (got >= bytes) { clearTimeout(t); s.destroy(); done(); }
});
s.on('error', (e) => { console.log('error:' + e.code); process.exit(0); });
`;

/** A TCP connect only: prints connected, refused, timeout or error:<code>. Args: host port timeoutMs */
export const TCP_CONNECT = `
const [host, port, ms] = process.argv.slice(1);
const s = require('net').connect({ host, port: Number(port) });
const t = setTimeout(() => { console.log('timeout'); process.exit(0); }, Number(ms));
s.on('connect', () => { console.log('connected'); clearTimeout(t); s.destroy(); process.exit(0); });
s.on('error', (e) => { console.log(e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET' ? 'refused' : 'error:' + e.code); clearTimeout(t); process.exit(0); });
`;

/** Opens a TCP connection every intervalMs (closing it after its first line or timeoutMs) until killed. Args: host port intervalMs timeoutMs */
export const CONNECT_LOOP = `
const [host, port, every, ms] = process.argv.slice(1).map((v, i) => (i === 0 ? v : Number(v)));
setInterval(() => {
  const s = require('net').connect({ host, port });
  const t = setTimeout(() => s.destroy(), ms);
  s.on('data', () => { clearTimeout(t); s.destroy(); });
  s.on('error', () => clearTimeout(t));
}, every);
`;

/** A TCP connect scan of ports from..to, 50 at a time, timeoutMs each; prints "open N closed N filtered N". Args: host from to timeoutMs */
export const PORT_SCAN = `
const [host, from, to, ms] = process.argv.slice(1).map((v, i) => (i === 0 ? v : Number(v)));
const net = require('net');
const r = { open: 0, closed: 0, filtered: 0 };
let next = from, running = 0;
const one = () => {
  if (next > to) { if (running === 0) { console.log('open ' + r.open + ' closed ' + r.closed + ' filtered ' + r.filtered); process.exit(0); } return; }
  const port = next++; running++;
  const s = net.connect({ host, port });
  const done = (k) => { if (!s.done) { s.done = true; r[k]++; running--; s.destroy(); one(); } };
  const t = setTimeout(() => done('filtered'), ms);
  s.on('connect', () => { clearTimeout(t); done('open'); });
  s.on('error', (e) => { clearTimeout(t); done(e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET' ? 'closed' : 'filtered'); });
};
for (let i = 0; i < 50; i++) one();
`;
