// Real etcd members for the cluster tests and benchmarks: Debian's etcd on loopback ports
// with their own data folders (never a system service), one or three of them;
// a member can be killed and started again. And a TCP proxy in front of etcd
// that a test can cut and restore, to make etcd unreachable for one client.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** TLS material for a test cluster: a CA, a server certificate for 127.0.0.1, a client certificate (openssl). */
export interface EtcdTls { ca: string; serverCert: string; serverKey: string; clientCert: string; clientKey: string }

export function makeTls(dir: string): EtcdTls {
  const f = (n: string) => join(dir, n);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=tapwall test CA', '-keyout', f('ca.key'), '-out', f('ca.pem'));
  for (const [name, ext] of [['server', 'subjectAltName=IP:127.0.0.1'], ['client', 'extendedKeyUsage=clientAuth']] as const) {
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=tapwall ${name}`, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`));
    execFileSync('sh', ['-c', `printf '%s\n' '${ext}' > ${f(`${name}.ext`)}`]);
    ssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f(`${name}.ext`), '-out', f(`${name}.pem`));
  }
  return { ca: f('ca.pem'), serverCert: f('server.pem'), serverKey: f('server.key'), clientCert: f('client.pem'), clientKey: f('client.key') };
}

async function healthyTls(clientPort: number, tls: EtcdTls): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port: clientPort, path: '/health', ca: readFileSync(tls.ca), cert: readFileSync(tls.clientCert), key: readFileSync(tls.clientKey), timeout: 1000 }, (res) => {
      let body = '';
      res.on('data', (d) => { body += String(d); });
      res.on('end', () => resolve(res.statusCode === 200 && body.includes('"true"')));
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => { req.destroy(); resolve(false); });
    req.end();
  });
}

async function healthy(clientPort: number, tls: EtcdTls | null = null): Promise<boolean> {
  if (tls) return healthyTls(clientPort, tls);
  try {
    const r = await fetch(`http://127.0.0.1:${clientPort}/health`);
    return r.ok && ((await r.json()) as { health: string }).health === 'true';
  } catch {
    return false;
  }
}

export class EtcdCluster {
  readonly dir = mkdtempSync(join(tmpdir(), 'tw-etcd-'));
  readonly members: Array<{ name: string; client: number; peer: number; proc: ChildProcess | null }> = [];

  /** TLS with client certificates on the client port (one member), or none. */
  readonly tls: EtcdTls | null;

  constructor(readonly size: 1 | 3, opts: { tls?: boolean } = {}) {
    this.tls = opts.tls ? makeTls(this.dir) : null;
  }

  get url(): string {
    return `etcd://${this.members.map((m) => `127.0.0.1:${m.client}`).join(',')}`;
  }

  /** One member's own URL (to reach it alone). */
  memberUrl(i: number): string {
    return `etcd://127.0.0.1:${this.members[i].client}`;
  }

  async start(): Promise<void> {
    for (let i = 0; i < this.size; i++) this.members.push({ name: `e${i}`, client: await freePort(), peer: await freePort(), proc: null });
    for (let i = 0; i < this.size; i++) this.spawn(i, 'new');
    await this.waitHealthy();
  }

  private spawn(i: number, state: 'new' | 'existing'): void {
    const m = this.members[i];
    const cluster = this.members.map((x) => `${x.name}=http://127.0.0.1:${x.peer}`).join(',');
    const scheme = this.tls ? 'https' : 'http';
    const tlsArgs = this.tls ? ['--cert-file', this.tls.serverCert, '--key-file', this.tls.serverKey, '--trusted-ca-file', this.tls.ca, '--client-cert-auth'] : [];
    // Through a small shell that kills etcd (hard) when told to, and when this test process is gone:
    // a test killed on a timeout must not leave members running.
    const watchdog = `etcd "$@" & e=$!; trap 'kill -9 $e 2>/dev/null; exit 0' TERM; while kill -0 ${process.pid} 2>/dev/null && kill -0 $e 2>/dev/null; do sleep 0.5; done; kill -9 $e 2>/dev/null`;
    m.proc = spawn('sh', ['-c', watchdog, 'etcd',
      '--name', m.name, '--data-dir', join(this.dir, m.name),
      '--listen-client-urls', `${scheme}://127.0.0.1:${m.client}`, '--advertise-client-urls', `${scheme}://127.0.0.1:${m.client}`, ...tlsArgs,
      '--listen-peer-urls', `http://127.0.0.1:${m.peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${m.peer}`,
      '--initial-cluster', cluster, '--initial-cluster-state', state, '--initial-cluster-token', `tw-${process.pid}`,
      // Short elections: a killed member's absence is settled in well under a second.
      '--heartbeat-interval', '50', '--election-timeout', '500', '--log-level', 'error',
    ], { stdio: 'ignore' });
  }

  /** Wait (polling /health, 20 s at most) until every running member answers healthy. */
  async waitHealthy(ms = 20_000): Promise<void> {
    const end = Date.now() + ms;
    for (;;) {
      const states = await Promise.all(this.members.filter((m) => m.proc !== null).map((m) => healthy(m.client, this.tls)));
      if (states.every(Boolean)) return;
      if (Date.now() > end) throw new Error(`etcd members not healthy after ${ms} ms: ${states.join(',')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async kill(i: number): Promise<void> {
    const p = this.members[i].proc;
    this.members[i].proc = null;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM'); // the watchdog kills etcd with SIGKILL and exits
    await gone;
  }

  async restart(i: number): Promise<void> {
    this.spawn(i, 'existing');
    await this.waitHealthy();
  }

  async stop(): Promise<void> {
    for (let i = 0; i < this.members.length; i++) await this.kill(i);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A TCP proxy to one etcd member: cut() drops every connection and refuses new ones; restore() lets them in again. */
export class CuttableProxy {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(private readonly target: number) {}

  get url(): string {
    return `etcd://127.0.0.1:${this.port}`;
  }

  async start(port = 0): Promise<void> {
    this.server = createServer((client) => {
      const upstream = connect(this.target, '127.0.0.1');
      for (const s of [client, upstream]) { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)); s.on('error', () => s.destroy()); }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve) => this.server!.listen(port, '127.0.0.1', resolve));
    this.port = (this.server.address() as { port: number }).port;
  }

  async cut(): Promise<void> {
    const s = this.server;
    this.server = null;
    for (const sock of this.sockets) sock.destroy();
    if (s) await new Promise((r) => s.close(r));
  }

  async restore(): Promise<void> {
    await this.start(this.port);
  }
}
