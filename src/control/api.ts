/**
 * The HTTP API (JSON), served on a Unix socket (mode 0600: only root, or the
 * user tapwall runs as, can connect, which is its authentication) and, when
 * configured, on TCP, where every request needs `Authorization: Bearer
 * <token>` with the token read from a file. Without it: 401, nothing changes.
 *
 * Requests are bounded (REQUEST_LIMIT bytes of body, 10 s to send it) and
 * validated; a bad one gets 400 with problems in the format of `tapwall
 * check --json` (file "(request)", line, column, path, message, code).
 * Errors are always `{ error: { code, message }, problems: [...] }`.
 *
 * Routes (v1):
 *   GET  /v1/status                   version, uptime, generation, revisions, ports, last apply/error
 *   GET  /v1/policy                   the document text; ETag: "<revision>"
 *   PUT  /v1/policy                   YAML or JSON body; If-Match: "<revision>" (or *) required
 *   GET  /v1/workloads                workloads, their tags (static and dynamic), port state
 *   POST /v1/workloads/{name}/tags    { add, remove, reason, ttl, by }
 *   GET  /v1/flows?workload=&state=&verdict=&limit=
 *   POST /v1/trace                    { packet, from?, to? }
 *   GET  /v1/rules                    per-rule packets, bytes, connections
 *   GET  /v1/policy/history           the versions put in force, newest first
 *   GET  /v1/policy/history/{id}      one version with its text
 *   GET  /v1/policy/diff?from=&to=    rule-level differences (to: the policy in force when left out)
 *   POST /v1/policy/rollback          { id, by? }; If-Match: "<revision>" (or *) required
 *   PUT  /v1/policy/staged            a policy evaluated beside the enforced one, never enforced; If-Match: staged revision (optional)
 *   GET  /v1/policy/staged            its text, disagreements per staged rule, the latest examples
 *   DELETE /v1/policy/staged          stop evaluating it
 *   POST /v1/policy/promote           { stagedRevision }; If-Match: "<enforced revision>": the staged policy becomes the enforced one
 */
import { placement, othersYielding } from '../util/placement.js';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import { timingSafeEqual, createHash } from 'node:crypto';
import { LineCounter, parseDocument, isMap } from 'yaml';
import type { Dataplane } from '../datapath/dataplane.js';
import type { PolicyProblem } from '../policy/errors.js';
import { CT_NAMES } from '../flow/flowTable.js';
import { ControlError, type Controller } from './controller.js';
import { flowList, portCounts, protoName, RuleListWriter, wordsAddress } from './views.js';
import { writeSliced } from '../util/sliced.js';
import { StringDecoder } from 'node:string_decoder';
import { FLE, flowLogTake } from '../flow/flowLog.js';
import { SK_COUNT, SK_NAMES } from '../flow/conntrack.js';
import { OUTCOME_NAMES } from '../packet/verdict.js';
import { parsePacketSpec, policyTrace, TraceSpecError } from './trace.js';
import type { EtcdStore } from './etcdStore.js';
import { tagsOf } from './store.js';
import { policyDiff, type HistoryEntry, type PolicyHistory } from './history.js';
import { sinceOf, type RuleAnalytics } from './ruleAnalytics.js';
import { jsonRepeatsKey, policyParse } from '../policy/load.js';

export const REQUEST_LIMIT = 1 << 20;
const REQUEST_SOURCE = '(request)';

export interface ApiOptions {
  version: string;
  /** Unix socket path, or null for none. */
  socketPath: string | null;
  /** host:port for TCP, or null for none. */
  listen: string | null;
  /** Bearer token for TCP (required when listen is set). */
  token: string | null;
  /** TLS for the TCP API: certificate chain and key (PEM). Without them it is plain HTTP. */
  tls?: { cert: string; key: string } | null;
  /** The cluster store, when the policy lives in etcd (status reports its health). */
  store?: EtcdStore | null;
  /** This host's name in the cluster. */
  host?: string | null;
  /** Per-rule totals across policy changes and restarts (GET /v1/rules: lastHit, total, ?unused=). */
  analytics?: RuleAnalytics | null;
}

/** Why a policy change is made: the X-Tapwall-Reason header (at most 1 KiB; longer is refused). */
function reasonOf(req: IncomingMessage): string | undefined {
  const r = req.headers['x-tapwall-reason'];
  if (typeof r !== 'string' || r.trim() === '') return undefined;
  if (r.length > 1024) throw new ControlError(400, 'bad-request', `X-Tapwall-Reason: at most 1024 characters, found ${r.length}`);
  return r.trim();
}

function bodyReason(body: Body): string | undefined {
  const r = body.value.reason;
  if (r === undefined || r === null) return undefined;
  if (typeof r !== 'string' || r.length > 1024) throw fieldError(body, 'reason', 'bad-value', 'expected why, as text of at most 1024 characters');
  return r.trim() || undefined;
}

function problem(code: string, path: string, message: string, line = 1, column = 1): PolicyProblem {
  return { severity: 'error', code, file: REQUEST_SOURCE, line, column, path, message };
}

/**
 * A JSON request body as a plain object, with problems located by line and
 * column. JSON.parse first, after the linear check for a repeated key (which
 * it would let the last one win): a tag change's body took 0.5-0.7 ms through
 * the located parser on the forwarding thread, a quarter of the change. The
 * located parse runs where it has something to say: a body JSON.parse refuses
 * or that is not an object (its error, with the place), one that repeats a
 * key, and a field's problem (`locate`, on demand).
 */
function parseBody(text: string): Body {
  let value: unknown;
  try {
    value = jsonRepeatsKey(text) ? undefined : JSON.parse(text);
  } catch {
    value = undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return parseBodyLocated(text);
  let located: Body | null = null;
  const locate = (key: string) => {
    try {
      return (located ??= parseBodyLocated(text)).locate(key);
    } catch {
      return { line: 1, column: 1 }; // should the located parser refuse what JSON.parse took: the field's problem stands, unplaced
    }
  };
  return { value: value as Record<string, unknown>, locate };
}

/** The body through the located parser (the `yaml` library, which reads JSON as YAML 1.2 does). */
function parseBodyLocated(text: string): Body {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const pos = lines.linePos(doc.errors[0].pos[0]);
    throw new ControlError(400, 'bad-request', 'the request body is not valid JSON', [problem('syntax', '(document)', doc.errors[0].message.split('\n')[0], pos.line, pos.col)]);
  }
  if (!isMap(doc.contents)) throw new ControlError(400, 'bad-request', 'the request body must be a JSON object', [problem('bad-type', '(document)', 'expected a JSON object')]);
  const value = doc.toJS() as Record<string, unknown>;
  const locate = (key: string) => {
    const node = (doc.contents as { items: Array<{ key: { value?: unknown; range?: [number, number, number] } }> }).items.find((p) => p.key?.value === key);
    const at = node?.key.range?.[0] ?? 0;
    const pos = lines.linePos(at);
    return { line: pos.line, column: pos.col };
  };
  return { value, locate };
}

interface Body { value: Record<string, unknown>; locate: (key: string) => { line: number; column: number } }

function fieldError(body: Body, key: string, code: string, message: string): ControlError {
  const { line, column } = body.locate(key);
  return new ControlError(400, 'bad-request', `${key}: ${message}`, [problem(code, key, message, line, column)]);
}

function onlyKeys(body: Body, allowed: string[]): void {
  for (const k of Object.keys(body.value)) {
    if (!allowed.includes(k)) throw fieldError(body, k, 'unknown-key', `unknown key '${k}'; expected one of ${allowed.join(', ')}`);
  }
}

function stringList(body: Body, key: string): string[] {
  const v = body.value[key];
  if (v === undefined) return [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw fieldError(body, key, 'bad-type', 'expected a list of tag names');
  return v as string[];
}

/** "90s", "15m", "1h", "2d" or a number of seconds. */
/** Limits on a tag request: tags named in one request, a tag's length, a reason's length. */
export const TAG_LIMITS = { tags: 64, tagLength: 128, reasonLength: 1024 } as const;

export function parseTtl(v: unknown): number | null {
  if (typeof v === 'number') return Number.isFinite(v) && v > 0 && v <= 366 * 86400 ? v : null;
  if (typeof v !== 'string') return null;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m) return null;
  const scale = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h' | 'd'];
  const s = Number(m[1]) * scale;
  return s > 0 && s <= 366 * 86400 ? s : null;
}

/**
 * A body past REQUEST_LIMIT is still read, and dropped, up to this many bytes before the 413 goes out: a
 * server that answers and closes while the client is still writing leaves it a reset, often before it has
 * read the answer (a 2 MiB body got EPIPE instead of its 413 in a test, now and then). Beyond this, or a body
 * declared larger, the answer goes out at once.
 */
const DRAIN_LIMIT = 4 * REQUEST_LIMIT;

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const tooLarge = () => new ControlError(413, 'too-large', `the request body is larger than ${REQUEST_LIMIT} bytes`);
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > DRAIN_LIMIT) return reject(tooLarge());
    let over = declared > REQUEST_LIMIT;
    // Decoded as the chunks come (a character cut between two chunks is kept for the next): a 10 MB policy
    // copied into one buffer and decoded at once held the forwarding thread 60-90 ms here.
    const decoder = new StringDecoder('utf8');
    const parts: string[] = [];
    let size = 0;
    const timer = setTimeout(() => { req.destroy(); reject(over ? tooLarge() : new ControlError(408, 'timeout', 'the request body did not arrive within 10 s')); }, 10_000);
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > REQUEST_LIMIT) over = true;
      if (!over) { parts.push(decoder.write(c)); return; }
      if (size > DRAIN_LIMIT) {
        clearTimeout(timer);
        req.pause();
        reject(tooLarge());
      }
    });
    req.on('end', () => {
      clearTimeout(timer);
      if (over) return reject(tooLarge());
      parts.push(decoder.end());
      resolve(parts.join(''));
    });
    req.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...headers });
  res.end(text);
}

function sendError(res: ServerResponse, e: unknown): void {
  if (e instanceof ControlError) {
    send(res, e.status, { error: { code: e.code, message: e.message }, problems: e.problems });
    return;
  }
  if (e instanceof TraceSpecError) {
    send(res, 400, { error: { code: 'bad-packet', message: e.message }, problems: [problem('bad-packet', 'packet', e.message)] });
    return;
  }
  send(res, 500, { error: { code: 'internal', message: (e as Error).message }, problems: [] });
}

/** `"12"` or `12` or `*` from If-Match. */
/** A change that must name the revision it was read at: If-Match, or 428 saying what to send. */
function ifMatchRequired(req: IncomingMessage, message: string): number | null {
  const expect = ifMatch(req);
  if (expect === undefined) throw new ControlError(428, 'if-match-required', message);
  return expect;
}

/** A body field that must be a positive integer (absent allowed when `optional`). */
function positiveInt(body: Body, key: string, message: string, optional = false): number | undefined {
  const v = body.value[key];
  if (optional && v === undefined) return undefined;
  if (!(Number.isInteger(v) && (v as number) > 0)) throw fieldError(body, key, 'bad-type', message);
  return v as number;
}

function ifMatch(req: IncomingMessage): number | null | undefined {
  const h = req.headers['if-match'];
  if (h === undefined) return undefined;
  if (h.trim() === '*') return null;
  const m = /^\s*(?:W\/)?"?(\d+)"?\s*$/.exec(h);
  if (!m) throw new ControlError(400, 'bad-request', `If-Match: expected a revision like "12" (or *), found '${h}'`, [problem('bad-value', 'If-Match', 'expected a revision like "12" or *')]);
  return Number(m[1]);
}

export class ApiServer {
  private readonly servers: Server[] = [];
  readonly addresses: { socket: string | null; url: string | null } = { socket: null, url: null };
  private readonly tokenDigest: Buffer | null;

  constructor(private readonly controller: Controller, private readonly dp: Dataplane, private readonly opts: ApiOptions) {
    this.tokenDigest = opts.token ? createHash('sha256').update(opts.token).digest() : null;
  }

  async start(): Promise<void> {
    if (this.opts.socketPath) {
      const path = this.opts.socketPath;
      // A socket left by a process that died is stale; anything else at that path is not ours to remove.
      if (existsSync(path)) {
        if (!lstatSync(path).isSocket()) throw Object.assign(new Error(`${path} exists and is not a socket`), { code: 'EAPISOCKET' });
        unlinkSync(path);
      }
      const server = createServer((req, res) => { void this.handle(req, res, false); });
      // Created with no permissions for others: umask is process-wide, so chmod right after listen, before anyone is told.
      await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(path, () => resolve()); });
      chmodSync(path, 0o600);
      this.servers.push(server);
      this.addresses.socket = path;
    }
    if (this.opts.listen) {
      if (!this.tokenDigest) throw Object.assign(new Error('--api-listen needs --api-token-file: the TCP API never runs without a token'), { code: 'EAPITOKEN' });
      const m = /^(.*):(\d+)$/.exec(this.opts.listen);
      if (!m) throw Object.assign(new Error(`--api-listen: expected HOST:PORT, found '${this.opts.listen}'`), { code: 'EAPILISTEN' });
      const host = m[1].replace(/^\[|\]$/g, '');
      const handler = (req: IncomingMessage, res: ServerResponse) => { void this.handle(req, res, true); };
      const tls = this.opts.tls ?? null;
      const server = tls ? createHttpsServer({ cert: tls.cert, key: tls.key, minVersion: 'TLSv1.2' }, handler) : createServer(handler);
      server.headersTimeout = 10_000;
      await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(Number(m[2]), host, () => resolve()); });
      const port = (server.address() as { port: number }).port;
      this.servers.push(server);
      this.addresses.url = `${tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
    }
  }

  close(): void {
    for (const s of this.servers) s.close();
    // A daemon that dropped its privileges may not remove its socket any more: the next start replaces it.
    try {
      if (this.addresses.socket && existsSync(this.addresses.socket)) unlinkSync(this.addresses.socket);
    } catch { /* left for the next start */ }
  }

  private authorized(req: IncomingMessage): boolean {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m || !this.tokenDigest) return false;
    // Digests have one length, so the comparison takes the same time whatever the guess.
    return timingSafeEqual(createHash('sha256').update(m[1]).digest(), this.tokenDigest);
  }

  private async handle(req: IncomingMessage, res: ServerResponse, tcp: boolean): Promise<void> {
    try {
      if (tcp && !this.authorized(req)) {
        req.resume();
        send(res, 401, { error: { code: 'unauthorized', message: 'a valid bearer token is required' }, problems: [] }, { 'www-authenticate': 'Bearer realm="tapwall"' });
        return;
      }
      const url = new URL(req.url ?? '/', 'http://tapwall');
      const actor = (body?: Body) => {
        const by = body?.value.by;
        const who = typeof by === 'string' && by.length > 0 && by.length <= 200 ? by : req.headers['x-tapwall-actor'];
        const base = tcp ? `token@${req.socket.remoteAddress}` : 'unix-socket';
        return typeof who === 'string' && who.length > 0 ? `${who.slice(0, 200)} (${base})` : base;
      };
      const route = `${req.method} ${url.pathname}`;
      const tagRoute = /^\/v1\/workloads\/([^/]+)\/tags$/.exec(url.pathname);
      if (route === 'GET /v1/status') return send(res, 200, this.status());
      if (route === 'GET /v1/policy') {
        const rev = this.controller.revision.policy;
        return send(res, 200, { revision: rev, text: this.controller.policyText }, { etag: `"${rev}"` });
      }
      if (route === 'PUT /v1/policy') {
        const expect = ifMatch(req);
        const text = await readBody(req); // read whole before any refusal, so the client gets the answer
        if (expect === undefined) throw new ControlError(428, 'if-match-required', 'PUT /v1/policy needs If-Match: "<revision>" (from GET /v1/policy), or If-Match: * to overwrite whatever is there');
        const result = await this.controller.putPolicy(text, expect, actor(), reasonOf(req));
        return send(res, 200, result, { etag: `"${result.revision}"` });
      }
      if (route === 'GET /v1/workloads') return send(res, 200, { workloads: this.workloads() });
      if (tagRoute && req.method === 'POST') {
        const body = parseBody(await readBody(req));
        onlyKeys(body, ['add', 'remove', 'reason', 'ttl', 'by', 'revision']);
        const add = stringList(body, 'add'), remove = stringList(body, 'remove');
        if (add.length + remove.length === 0) throw fieldError(body, 'add', 'missing-key', 'name at least one tag to add or remove');
        if (add.length + remove.length > TAG_LIMITS.tags) throw fieldError(body, add.length > 0 ? 'add' : 'remove', 'too-many', `at most ${TAG_LIMITS.tags} tags in one request, found ${add.length + remove.length}`);
        const long = [...add, ...remove].find((x) => x.length > TAG_LIMITS.tagLength);
        if (long !== undefined) throw fieldError(body, add.includes(long) ? 'add' : 'remove', 'too-long', `a tag is at most ${TAG_LIMITS.tagLength} characters; one has ${long.length}`);
        const reason = body.value.reason;
        if (typeof reason !== 'string' || reason.trim() === '') throw fieldError(body, 'reason', 'missing-key', 'every tag change needs a reason (it goes to the audit log)');
        if (reason.length > TAG_LIMITS.reasonLength) throw fieldError(body, 'reason', 'too-long', `a reason is at most ${TAG_LIMITS.reasonLength} characters, found ${reason.length}`);
        let ttlSeconds: number | null = null;
        if (body.value.ttl !== undefined && body.value.ttl !== null) {
          ttlSeconds = parseTtl(body.value.ttl);
          if (ttlSeconds === null) throw fieldError(body, 'ttl', 'bad-value', `expected a duration like 90s, 15m, 1h or 2d (up to 366d), found ${JSON.stringify(body.value.ttl)}`);
          if (add.length === 0) throw fieldError(body, 'ttl', 'bad-value', 'a time-to-live applies to added tags; this request adds none');
        }
        const revision = positiveInt(body, 'revision', 'expected the tags revision as a positive integer', true);
        let workloadName: string;
        try {
          workloadName = decodeURIComponent(tagRoute[1]);
        } catch {
          throw new ControlError(400, 'bad-request', `the workload name in the path is not valid percent-encoding: '${tagRoute[1]}'`, [problem('bad-value', '(path)', 'not valid percent-encoding')]);
        }
        const result = await this.controller.changeTags(workloadName, {
          add, remove, reason: reason.trim(), ttlSeconds, by: actor(body), expectRevision: revision ?? null,
        });
        return send(res, 200, result);
      }
      if (route === 'GET /v1/flows') {
        const limitText = url.searchParams.get('limit') ?? '1000';
        const limit = Number(limitText);
        // Bounded: a page of flows is built and sent in one piece on the event loop the data plane shares.
        if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new ControlError(400, 'bad-request', `limit: expected 1 to 10000, found '${limitText}'`, [problem('bad-value', 'limit', 'expected 1 to 10000')]);
        const state = url.searchParams.get('state') ?? undefined;
        if (state !== undefined && !(CT_NAMES as readonly string[]).includes(state)) throw new ControlError(400, 'bad-request', `state: expected one of ${CT_NAMES.slice(1).join(', ')}`, [problem('bad-value', 'state', `expected one of ${CT_NAMES.slice(1).join(', ')}`)]);
        const verdict = url.searchParams.get('verdict') ?? undefined;
        if (verdict !== undefined && verdict !== 'allowed' && verdict !== 'cut') throw new ControlError(400, 'bad-request', 'verdict: expected allowed or cut', [problem('bad-value', 'verdict', 'expected allowed or cut')]);
        const workload = url.searchParams.get('workload') ?? undefined;
        if (workload !== undefined && !this.dp.compiled.policy.workloads.has(workload)) throw new ControlError(404, 'unknown-workload', `no workload named '${workload}'`);
        return send(res, 200, flowList(this.dp, { workload, state, verdict, limit }));
      }
      if (route === 'POST /v1/trace') {
        const body = parseBody(await readBody(req));
        onlyKeys(body, ['packet', 'from', 'to']);
        const { packet, from, to } = body.value;
        if (typeof packet !== 'string') throw fieldError(body, 'packet', 'missing-key', "expected the packet as text, like 'tcp 10.0.0.11:40000 -> 10.0.0.21:5432'");
        for (const [k, v] of [['from', from], ['to', to]] as const) if (v !== undefined && typeof v !== 'string') throw fieldError(body, k, 'bad-type', 'expected a workload name');
        return send(res, 200, policyTrace(this.controller.policy, parsePacketSpec(packet), { from: from as string | undefined, to: to as string | undefined, ports: this.dp.switchPorts() }));
      }
      if (route === 'GET /v1/rules') {
        const unused = url.searchParams.get('unused');
        const since = unused === null ? null : sinceOf(unused);
        if (unused !== null && since === null) throw new ControlError(400, 'bad-request', `unused: expected a duration like 7d, 12h or 30m, or an ISO time, found '${unused.slice(0, 40)}'`, [problem('bad-value', 'unused', 'expected a duration or an ISO time')]);
        const analytics = this.opts.analytics ?? null;
        const writer = new RuleListWriter({
          rules: this.dp.compiled.rules, stats: this.dp.ct.ruleStats, defaultAction: this.dp.compiled.defaultAction,
          clockOffset: Date.now() - performance.now(), kept: analytics === null ? null : (section, id) => analytics.keptOf(section, id), since,
        });
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        void writeSliced(res, writer);
        return;
      }
      if (route === 'PUT /v1/policy/staged') {
        const text = await readBody(req);
        const expect = ifMatch(req) ?? null;
        const result = await this.controller.stage(text, expect, actor(), reasonOf(req));
        return send(res, 200, result, { etag: `"${result.stagedRevision}"` });
      }
      if (route === 'GET /v1/policy/staged') return send(res, 200, this.stagedView(), { etag: `"${this.controller.staged.revision}"` });
      if (route === 'DELETE /v1/policy/staged') {
        await this.controller.unstage(actor());
        return send(res, 200, { stagedRevision: this.controller.staged.revision });
      }
      if (route === 'POST /v1/policy/promote') {
        const body = parseBody(await readBody(req));
        onlyKeys(body, ['stagedRevision', 'by', 'reason']);
        const expect = ifMatchRequired(req, 'POST /v1/policy/promote needs If-Match: "<revision>" of the enforced policy (or *)');
        const staged = positiveInt(body, 'stagedRevision', 'expected the staged revision (from GET /v1/policy/staged) as a positive integer')!;
        const result = await this.controller.promote(expect, staged, actor(body), bodyReason(body) ?? reasonOf(req));
        return send(res, 200, result, { etag: `"${result.revision}"` });
      }
      const historyRoute = /^\/v1\/policy\/history\/([^/]+)$/.exec(url.pathname);
      // A version put in force is written to the history a slice at a time: read it once written.
      if (url.pathname.startsWith('/v1/policy/history') || route === 'GET /v1/policy/diff' || route === 'POST /v1/policy/rollback') await this.controller.history?.settled();
      if (route === 'GET /v1/policy/history') return send(res, 200, { entries: this.historyOrFail().list() });
      if (historyRoute && req.method === 'GET') {
        const { entry, text } = this.historyEntry(historyRoute[1], 'id');
        return send(res, 200, { ...entry, text });
      }
      if (route === 'GET /v1/policy/diff') {
        // Rule-level differences between two kept versions (to: the one in force when left out).
        const from = this.historyEntry(url.searchParams.get('from') ?? '', 'from');
        const toParam = url.searchParams.get('to');
        const to = toParam === null ? null : this.historyEntry(toParam, 'to');
        const parse = (text: string, what: string) => {
          const { policy } = policyParse(text, what, { shadows: false });
          if (!policy) throw new ControlError(409, 'unreadable-version', `history entry ${what} no longer validates with this version of tapwall`);
          return policy;
        };
        const a = parse(from.text, `#${from.entry.id}`);
        const b = to === null ? this.controller.policy.policy : parse(to.text, `#${to.entry.id}`);
        return send(res, 200, { from: from.entry.id, to: to?.entry.id ?? 'running', ...policyDiff(a, b) });
      }
      if (route === 'POST /v1/policy/rollback') {
        // An ordinary apply of a kept version's text: validated, compare-and-set (If-Match), audited.
        const body = parseBody(await readBody(req));
        onlyKeys(body, ['id', 'by', 'reason']);
        const expect = ifMatchRequired(req, 'POST /v1/policy/rollback needs If-Match: "<revision>" (from GET /v1/policy), or If-Match: *');
        const id = positiveInt(body, 'id', 'expected a history entry id (a positive integer, from GET /v1/policy/history)')!;
        const { text } = this.historyEntry(String(id), 'id');
        const result = await this.controller.putPolicy(text, expect, `${actor(body)} rollback to #${id}`, bodyReason(body) ?? reasonOf(req));
        return send(res, 200, { ...result, rolledBackTo: id }, { etag: `"${result.revision}"` });
      }
      const known = ['/v1/status', '/v1/policy', '/v1/workloads', '/v1/flows', '/v1/trace', '/v1/rules', '/v1/policy/history', '/v1/policy/diff', '/v1/policy/rollback', '/v1/policy/staged', '/v1/policy/promote'];
      if (known.includes(url.pathname) || tagRoute || historyRoute) throw new ControlError(405, 'method-not-allowed', `${req.method} is not allowed on ${url.pathname}`);
      throw new ControlError(404, 'not-found', `no such endpoint: ${url.pathname}`);
    } catch (e) {
      req.resume();
      sendError(res, e);
    }
  }

  status(): Record<string, unknown> {
    const c = this.controller;
    return {
      version: this.opts.version,
      pid: process.pid,
      uptimeSeconds: Math.round((Date.now() - c.started) / 1000),
      generation: c.generation,
      revision: c.revision,
      rules: c.policy.stats.rules,
      lastApply: c.lastApply,
      applyFailures: c.applyFailures,
      lastError: c.lastError,
      // Rules an earlier rule hides wholly or in part (found once per document, off the packet thread).
      shadowed: { count: c.shadows.count, rules: c.shadows.list.slice(0, 50).map((p) => ({ code: p.code, path: p.path, line: p.line, message: p.message })) },
      staged: c.staged.text === null ? null : { revision: c.staged.revision },
      host: this.opts.host ?? null,
      // --forwarding-cpu: the forwarding thread's CPU and where tapwall's other threads run (null: not placed).
      placement: placement(),
      othersYielding: othersYielding(),
      store: this.opts.store
        ? { kind: 'etcd', url: this.opts.store.opts.url, connected: this.opts.store.connected, syncedAt: this.opts.store.syncedAt === null ? null : new Date(this.opts.store.syncedAt).toISOString(),
          watchRestarts: this.opts.store.watchRestarts, compactions: this.opts.store.compactions, lastError: this.opts.store.lastError }
        : { kind: 'file', connected: true },
      flows: { live: this.dp.table.live, capacity: this.dp.table.capacity, stateFile: this.dp.flowState?.path ?? null, stateProblems: this.dp.flowStateProblems },
      ports: this.dp.ports.filter((p) => !p.retired).map((p) => {
        const c = portCounts(this.dp, p.index);
        return { name: p.spec.name, mode: p.spec.mode, workload: this.dp.workloadOf(p.index), up: c.up, attaches: c.attaches, rx: c.rx, tx: c.tx, outcomes: c.outcomes };
      }),
    };
  }

  /** The latest disagreements of the staged policy, kept here as the data plane's small ring is drained. */
  private readonly stagedExamples: Array<Record<string, unknown>> = [];

  private stagedView(): Record<string, unknown> {
    const { text, revision } = this.controller.staged;
    const staged = this.dp.stagedPolicy;
    const ct = this.dp.ct;
    if (ct.stagedLog) {
      for (const r of flowLogTake(ct.stagedLog)) {
        const family = r[FLE.family] as 4 | 6;
        const order = r[FLE.stagedRule];
        const sr = order >= 0 ? staged?.rules[order] ?? null : null;
        const now = r[FLE.ruleIn] !== -2 ? r[FLE.ruleIn] : r[FLE.ruleOut];
        const er = now >= 0 ? this.dp.rulesAt(r[FLE.generation])?.[now] ?? null : null;
        this.stagedExamples.push({
          time: new Date(r[FLE.time]).toISOString(), kind: SK_NAMES[r[FLE.staged] - 1], proto: protoName(r[FLE.proto]),
          src: wordsAddress(r, FLE.src, family), sport: r[FLE.sport], dst: wordsAddress(r, FLE.dst, family), dport: r[FLE.dport],
          enforced: { verdict: OUTCOME_NAMES[r[FLE.outcome]] === 'forward' ? 'allow' : OUTCOME_NAMES[r[FLE.outcome]] === 'reject' ? 'reject' : 'drop', rule: now === -1 ? 'default' : er?.id ?? null },
          staged: { section: sr?.section ?? null, rule: order === -1 ? 'default' : sr?.id ?? null },
        });
      }
      this.stagedExamples.splice(0, Math.max(0, this.stagedExamples.length - 50));
    }
    const disagreements: Array<Record<string, unknown>> = [];
    if (staged && text !== null) {
      const st = ct.stagedStats;
      for (let i = -1; i < staged.rules.length; i++) {
        const r = i >= 0 ? staged.rules[i] : null;
        const row: Record<string, number> = {};
        SK_NAMES.forEach((k, j) => { const v = st[(i + 1) * SK_COUNT + j] ?? 0; if (v > 0) row[k] = v; });
        if (Object.keys(row).length > 0) disagreements.push({ section: r?.section ?? null, rule: r?.id ?? 'default', action: r?.action ?? staged.defaultAction, ...row });
      }
    }
    return { stagedRevision: revision, text, disagreements, examples: text === null ? [] : this.stagedExamples.slice().reverse() };
  }

  private historyOrFail(): PolicyHistory {
    const h = this.controller.history;
    if (!h) throw new ControlError(404, 'no-history', 'this daemon keeps no policy history');
    return h;
  }

  /** A kept version by its id (text from a path or query), or a 400/404 that names the parameter. */
  private historyEntry(text: string, param: string): { entry: HistoryEntry; text: string } {
    const id = Number(text);
    if (!/^[1-9][0-9]{0,9}$/.test(text)) throw new ControlError(400, 'bad-request', `${param}: expected a history entry id (a positive integer), found '${text.slice(0, 40)}'`, [problem('bad-value', param, 'expected a history entry id')]);
    const found = this.historyOrFail().get(id);
    if (!found) throw new ControlError(404, 'unknown-version', `${param}: no history entry #${id} is kept (GET /v1/policy/history lists them)`);
    return found;
  }

  private workloads(): unknown[] {
    const compiled = this.controller.policy;
    const dynamic = this.controller.dynamicTags;
    return [...compiled.policy.workloads.values()].map((w) => {
      const port = this.dp.ports.find((p) => !p.retired && this.dp.workloadOf(p.index) === w.name);
      const groups = [...compiled.groups].filter(([, g]) => g.members.has(w.name)).map(([n]) => n);
      return {
        name: w.name, nic: w.nic, mac: w.mac, ips: w.ips.map((p) => p.text.replace(/\/(32|128)$/, '')),
        tags: w.tags, dynamicTags: tagsOf(dynamic, w.name) ?? [], groups, port: port ? { up: port.up } : null,
      };
    });
  }
}
