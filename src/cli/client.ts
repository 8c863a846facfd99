/**
 * The CLI side of the API: one request helper (Unix socket by default, or a
 * URL with a bearer token) and the text each command prints.
 */
import type { Placement } from '../util/placement.js';
import { request, type RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { readFileSync } from 'node:fs';
import { formatProblem, type PolicyProblem } from '../policy/errors.js';

export interface ApiTarget {
  socket: string;
  /** http://host:port of a TCP API; overrides socket. */
  url?: string;
  tokenFile?: string;
  /** CA certificate (PEM file) to trust for an https:// API, beyond the system's. */
  caFile?: string;
}

/** An error answer from the API: status, code, message and problems. */
export class ApiError extends Error {
  readonly code = 'EAPI';
  constructor(readonly status: number, readonly apiCode: string, message: string, readonly problems: PolicyProblem[]) {
    super(message);
  }
  describe(): string {
    return [...this.problems.map(formatProblem), `tapwall: ${this.message} (${this.status} ${this.apiCode})`].join('\n');
  }
}

export function apiCall<T = Record<string, unknown>>(
  target: ApiTarget, method: string, path: string, body?: string | object, headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: T }> {
  const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  const h: Record<string, string> = { accept: 'application/json', ...headers };
  if (payload !== undefined) {
    h['content-type'] ??= 'application/json';
    h['content-length'] = String(Buffer.byteLength(payload));
  }
  // A connection of its own for each call (agent: false), never one kept from an earlier call: a process whose
  // event loop was held up (a synchronous child process, a long computation) while the API's keep-alive timer
  // closed an idle connection would otherwise write its next request into that closed connection and get
  // ECONNRESET or EPIPE (seen in a test, a CLI command run synchronously between two calls on a loaded machine).
  let opts: RequestOptions;
  if (target.url) {
    const u = new URL(path, target.url);
    if (target.tokenFile) h.authorization = `Bearer ${readFileSync(target.tokenFile, 'utf8').trim()}`;
    opts = { hostname: u.hostname.replace(/^\[|\]$/g, ''), port: u.port, path: u.pathname + u.search, method, headers: h, agent: false };
    if (u.protocol === 'https:') Object.assign(opts, { ca: target.caFile ? readFileSync(target.caFile) : undefined });
    else if (u.protocol !== 'http:') return Promise.reject(new Error(`--api: expected an http:// or https:// URL, found '${target.url}'`));
  } else {
    opts = { socketPath: target.socket, path, method, headers: h, agent: false };
  }
  return new Promise((resolve, reject) => {
    const secure = target.url !== undefined && target.url.startsWith('https:');
    const req = (secure ? httpsRequest : request)(opts, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try { parsed = JSON.parse(text); } catch { return reject(new Error(`the API answered ${res.statusCode} with something other than JSON`)); }
        const status = res.statusCode ?? 0;
        if (status >= 400) {
          const e = parsed as { error?: { code?: string; message?: string }; problems?: PolicyProblem[] };
          return reject(new ApiError(status, e.error?.code ?? 'error', e.error?.message ?? text, e.problems ?? []));
        }
        resolve({ status, headers: res.headers, body: parsed as T });
      });
    });
    req.setTimeout(30_000, () => req.destroy(new Error('the API did not answer within 30 s')));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (!target.url && (e.code === 'ENOENT' || e.code === 'ECONNREFUSED')) {
        reject(Object.assign(new Error(`no tapwall API at ${target.socket}: is \`tapwall run\` running (and is this its --api-socket)?`), { code: e.code }));
      } else reject(e);
    });
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/** `+tag` adds, `-tag` or `~tag` removes. */
export function parseTagChanges(words: string[]): { add: string[]; remove: string[] } {
  const add: string[] = [], remove: string[] = [];
  for (const w of words) {
    if (w.startsWith('+') && w.length > 1) add.push(w.slice(1));
    else if ((w.startsWith('-') || w.startsWith('~')) && w.length > 1) remove.push(w.slice(1));
    else throw Object.assign(new Error(`'${w}': write +TAG to add a tag and -TAG (or ~TAG) to remove one`), { code: 'EUSAGE' });
  }
  return { add, remove };
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((v, c) => (c === r.length - 1 ? v : v.padEnd(widths[c]))).join('  ')).join('\n');
}

type Ref = { section: string; id: string } | 'default' | null;
const ruleText = (r: Ref) => (r === null ? '-' : r === 'default' ? 'default' : `${r.section}/${r.id}`);

export function formatFlows(r: { total: number; matched: number; flows: Array<Record<string, unknown>> }): string {
  const rows = [['PROTO', 'SOURCE', 'DESTINATION', 'FROM', 'TO', 'STATE', 'VERDICT', 'RULES (egress, ingress)', 'PKTS']];
  for (const f of r.flows) {
    const p = f.packets as { orig: number; reply: number };
    rows.push([
      String(f.proto), `${f.src}:${f.sport}`, `${f.dst}:${f.dport}`, String(f.from ?? '-'), String(f.to ?? '-'), String(f.state), String(f.verdict),
      `${ruleText(f.egressRule as Ref)}, ${ruleText(f.ingressRule as Ref)}`, `${p.orig}/${p.reply}`,
    ]);
  }
  return `${table(rows)}\n${r.flows.length} shown, ${r.matched} matched, ${r.total} in the table`;
}

export function formatRules(r: { rules: Array<{ section: string; id: string; action: string; packets: number; bytes: number; connections: number; lastHit?: string | null }>; default: { action: string; packets: number; bytes: number; connections: number } }, all: boolean): string {
  const rows = [['RULE', 'ACTION', 'CONNECTIONS', 'PACKETS', 'BYTES']];
  for (const x of r.rules) if (all || x.packets > 0) rows.push([`${x.section}/${x.id}`, x.action, String(x.connections), String(x.packets), String(x.bytes)]);
  rows.push(['(default)', r.default.action, String(r.default.connections), String(r.default.packets), String(r.default.bytes)]);
  return table(rows);
}

export function formatStatus(s: Record<string, unknown>): string {
  const ports = s.ports as Array<{ name: string; mode: string; workload: string | null; up: boolean; rx: number; tx: number; outcomes: Record<string, number> }>;
  const rev = s.revision as { policy: number; tags: number };
  const last = s.lastApply as { loadMs?: number | null; compileMs: number; at: string } | null;
  const err = s.lastError as { at: string; message: string } | null;
  const lines = [
    `tapwall ${s.version}, pid ${s.pid}, up ${s.uptimeSeconds} s`,
    `policy: generation ${s.generation}, revision ${rev.policy} (tags ${rev.tags}), ${s.rules} rules` +
      (last ? `, last applied ${last.at} (${typeof last.loadMs === 'number' ? `loaded in ${last.loadMs.toFixed(1)} ms, ` : ''}compiled in ${last.compileMs.toFixed(1)} ms)` : ''),
    `apply failures: ${s.applyFailures}${err ? `, last at ${err.at}: ${err.message}` : ''}`,
    ...((s.shadowed as { count: number; rules: Array<{ message: string }> } | undefined)?.count
      ? [`shadowed rules: ${(s.shadowed as { count: number }).count}`, ...(s.shadowed as { rules: Array<{ message: string }> }).rules.slice(0, 5).map((r) => `  ${r.message}`)]
      : []),
    `flows: ${(s.flows as { live: number; capacity: number }).live} of ${(s.flows as { live: number; capacity: number }).capacity}`,
    ...(s.placement ? [`forwarding thread on CPU ${(s.placement as Placement).forwarding}, tapwall's other threads on ${(s.placement as Placement).others.join(',')}`] : []),
    ...(s.othersYielding ? [`forwarding thread first: tapwall's other threads at nice ${(s.othersYielding as { nice: number }).nice}`] : []),
    '',
  ];
  const rows = [['PORT', 'WORKLOAD', 'MODE', 'STATE', 'RX', 'TX', 'DROPPED (by reason)']];
  for (const p of ports) {
    const drops = Object.entries(p.outcomes).filter(([k, v]) => k !== 'forward' && v > 0).map(([k, v]) => `${k} ${v}`).join(', ');
    rows.push([p.name, p.workload ?? '(uplink)', p.mode, p.up ? 'up' : 'DOWN', String(p.rx), String(p.tx), drops || '-']);
  }
  return `${lines.join('\n')}${table(rows)}`;
}
