import type { ChildProcess } from 'node:child_process';
import { InlinePreparer, type DocumentRef, type Prepared, type Preparer } from '../src/control/prepare.js';
import type { TagMap } from '../src/control/store.js';

/**
 * An inline preparer whose every preparation goes through `around`, which
 * prepares by calling `next` (or does not): for tests that watch the
 * controller's preparations or make one fail.
 */
export function preparerAround(around: (next: () => Promise<Prepared>, doc: DocumentRef, tags: TagMap) => Promise<Prepared>): Preparer {
  const inner = new InlinePreparer();
  return {
    prepare: (doc, tags, host) => around(() => inner.prepare(doc, tags, host), doc, tags),
    installed: (compiled) => inner.installed(compiled),
    close: async () => {},
  };
}
/**
 * A small data center for the control-plane tests: web, app and db VMs with a
 * quarantine section first, on interfaces named `<prefix>-web1` etc. and
 * addresses 10.<net>.<tier>.<host>. `webServices` are what web may open on app.
 */
export function tieredPolicy(prefix: string, net: number, opts: { web2?: boolean; webServices?: string } = {}): string {
  const vm = (name: string, nic: string, tier: number, host: number, tag: string) =>
    `  ${name}: { nic: ${prefix}-${nic}, mac: "02:${net}:00:00:0${tier}:${host}", ips: [10.${net}.${tier}.${host}], tags: [${tag}] }`;
  return [
    'default: drop',
    'spoofguard: true',
    'workloads:',
    vm('web-1', 'web1', 1, 11, 'web'),
    ...(opts.web2 ? [vm('web-2', 'web2', 1, 12, 'web')] : []),
    vm('app-1', 'app1', 2, 21, 'app'),
    vm('db-1', 'db1', 3, 31, 'db'),
    'groups:',
    '  web: { tags: [web] }',
    '  app: { tags: [app] }',
    '  db: { tags: [db] }',
    '  quarantined: { tags: [quarantine] }',
    'sections:',
    '  - name: emergency',
    '    rules:',
    '      - { id: quarantine-out, from: quarantined, to: any, action: drop, log: true }',
    '      - { id: quarantine-in, from: any, to: quarantined, action: drop, log: true }',
    '  - name: application',
    '    rules:',
    `      - { id: web-to-app, from: web, to: app, services: [${opts.webServices ?? 'tcp/8080'}], action: allow }`,
    '      - { id: app-to-db, from: app, to: db, services: [tcp/5432], action: allow, log: true }',
    '',
  ].join('\n');
}

/**
 * Poll `get` (every 50 ms) until `ok` accepts its value, and return that value. An error while polling
 * counts as "not yet" (a server still starting). After `ms` it throws, naming what it waited for and the
 * last value or error seen.
 */
export async function untilValue<T>(what: string, get: () => T | Promise<T>, ok: (v: T) => boolean, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await get();
      if (ok(v)) return v;
      last = v;
    } catch (e) {
      last = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** Poll a condition until it holds; throws after `ms` (see untilValue). */
export async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  await untilValue(what, cond, (v) => v, ms);
}

/** The output lines of a background script (TCP_STREAM and the like), as they come, and its end. */
export function collect(p: ChildProcess): { lines: string[]; done: Promise<void> } {
  const lines: string[] = [];
  let buf = '';
  p.stdout!.on('data', (d) => {
    buf += String(d);
    let i;
    while ((i = buf.indexOf('\n')) >= 0) { lines.push(buf.slice(0, i)); buf = buf.slice(i + 1); }
  });
  return { lines, done: new Promise((resolve) => p.once('exit', () => resolve())) };
}

/** Echo lines of a TCP_STREAM after a time (ms since epoch); its error and close lines. */
/** TCP_STREAM's echoes of lines written after `after` (ms since the epoch; the greeting counts by when it came). */
export const echoes = (lines: string[], after = 0) => lines.filter((l) => l.startsWith('echo ') && Number(l.split(' ')[2]) > after).length;
export const errors = (lines: string[]) => lines.filter((l) => l.startsWith('error ') || l.startsWith('close '));
