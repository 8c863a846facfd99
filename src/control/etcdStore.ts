/**
 * The etcd store: one policy for many hosts.
 *
 * Data model (under a prefix, `/tapwall` by default; every value is JSON)
 *   policy/settings                 { default, spoofguard }
 *   policy/workloads/<name>         a workload as in the document, with `host`: the hypervisor it runs on
 *   policy/groups/<name>            a group as in the document
 *   policy/services/<name>          a service as in the document (a spec, a list, an object)
 *   policy/sections/<name>          { position, comment }: sections are read in position order
 *   policy/rules/<section>/<NNNNNN> a rule, NNNNNN its position in its section
 *   policy/epoch                    { writing, by, at }: tapwall's writers take turns through it
 *   tags/<workload>                 the workload's dynamic tags [{ tag, reason, by, added, expiresAt }]
 *   hosts/<host>                    (leased) a daemon alive: { host, vnics, enforcing, generation, since, pid, version }
 *   flows/<workload>                (leased) a migrating workload's connections, handed from its old host to its new one
 * One key per object, so that a tag change or an edited rule ships that key
 * alone to every host (a watch on policy/ and tags/), never the document.
 *
 * Reading: the policy document is assembled from the policy/ keys (the
 *   controller validates it like a file's, and a problem is reported with the
 *   key it sits in); `revision` is etcd's: the newest mod revision of any
 *   policy key (or the revision that deleted one), likewise for tags.
 * Writing: `putPolicy` writes only the keys that differ from what is stored
 *   (a document with no `workloads` leaves the inventory as it is),
 *   compare-and-set on the epoch key (two writers: one wins, the other gets
 *   a stale revision, nothing is mixed). Up to TXN_OPS operations go in one
 *   transaction; a larger change opens the epoch (writing: true), writes in
 *   batches and closes it, and readers hold such a change until it is closed,
 *   so every host applies all of it or nothing of it. `putTags` compares the
 *   mod revision of each workload key it changes.
 *
 * Failures (fail-static): the last state read stays in force whatever
 *   happens to etcd. The watch resumes on its own after a broken stream; on
 *   every reconnection, and when etcd answers that the revision to resume
 *   from is compacted, the store reads everything again at one revision and
 *   watches from the next, so no change is ever silently skipped (the gap
 *   calico#4109 and cilium#3011 describe). `connected`, `syncedAt` and
 *   `watchRestarts` say how it goes (status and metrics).
 */
import type { KeyIndex } from './prepare.js';
import { readFileSync } from 'node:fs';
import { Etcd3, type IKeyValue, type Lease, type Watcher } from 'etcd3';
import { ExponentialBackoff } from 'cockatiel';
import { parse as parseYaml } from 'yaml';
import { tagsOf, type CasResult, type PolicyStore, type StoreKey, type StoreState, type TagMap } from './store.js';

/** Operations per transaction; etcd refuses more than 128 by default (--max-txn-ops). */
export const TXN_OPS = 120;
/** A host's registration lives this long without a keepalive. */
export const HOST_LEASE_SECONDS = 10;

export interface EtcdOptions {
  /** etcd://host:port[,host:port...] (https with TLS options). */
  url: string;
  prefix?: string;
  ca?: string;
  cert?: string;
  key?: string;
  /** Seconds a host's registration outlives its last keepalive (HOST_LEASE_SECONDS by default). */
  leaseSeconds?: number;
}

export class EtcdUrlError extends Error {
  readonly code = 'ETCD_URL';
}

/** The client endpoints of an etcd:// URL. */
export function etcdEndpoints(url: string, tls: boolean): string[] {
  const m = /^etcd:\/\/(.+)$/.exec(url);
  if (!m) throw new EtcdUrlError(`--store: expected etcd://HOST:PORT[,HOST:PORT...], found '${url}'`);
  return m[1].split(',').map((hp) => {
    if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(hp)) throw new EtcdUrlError(`--store: '${hp}' is not HOST:PORT`);
    return `${tls ? 'https' : 'http'}://${hp}`;
  });
}

/** A policy document as the keys it is stored in (key below the prefix -> JSON text). */
export function documentToKeys(doc: Record<string, unknown>): Map<string, string> {
  const out = new Map<string, string>();
  const put = (k: string, v: unknown) => out.set(k, JSON.stringify(v));
  put('policy/settings', { default: doc.default ?? 'drop', spoofguard: doc.spoofguard ?? true });
  for (const kind of ['workloads', 'groups', 'services'] as const) {
    const m = doc[kind];
    if (m && typeof m === 'object' && !Array.isArray(m)) for (const [name, v] of Object.entries(m)) put(`policy/${kind}/${name}`, v);
  }
  const sections = Array.isArray(doc.sections) ? doc.sections : [];
  sections.forEach((s: unknown, position) => {
    const sec = (s ?? {}) as { name?: unknown; comment?: unknown; rules?: unknown };
    const name = String(sec.name ?? `#${position}`);
    put(`policy/sections/${name}`, sec.comment === undefined ? { position } : { position, comment: sec.comment });
    const rules = Array.isArray(sec.rules) ? sec.rules : [];
    rules.forEach((r: unknown, i: number) => put(`policy/rules/${name}/${String(i).padStart(6, '0')}`, r));
  });
  return out;
}

export interface KeyProblem { key: string; message: string }

/**
 * The policy document assembled from its keys, and the keys that could not be
 * read (bad JSON, an unknown kind, a rule of no section): those are reported,
 * not guessed at.
 */
export function keysToDocument(keys: Map<string, string>): { doc: Record<string, unknown>; problems: KeyProblem[]; sections: KeyIndex['sections'] } {
  const problems: KeyProblem[] = [];
  const doc: Record<string, unknown> = {};
  const maps: Record<string, Record<string, unknown>> = { workloads: {}, groups: {}, services: {} };
  const sections = new Map<string, { position: number; comment?: unknown; rules: Array<[string, unknown]> }>();
  const rulesOf = new Map<string, Array<[string, unknown]>>();
  for (const [key, text] of keys) {
    if (!key.startsWith('policy/') || key === 'policy/epoch') continue;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      problems.push({ key, message: `not JSON: ${(e as Error).message}` });
      continue;
    }
    const parts = key.split('/');
    if (parts[1] === 'settings' && parts.length === 2) {
      if (value && typeof value === 'object' && !Array.isArray(value)) Object.assign(doc, value);
      else problems.push({ key, message: 'expected { default, spoofguard }' });
    } else if ((parts[1] === 'workloads' || parts[1] === 'groups' || parts[1] === 'services') && parts.length === 3) {
      // Map with no prototype: a name like `constructor` is a name, not a method.
      maps[parts[1]][parts[2]] = value;
    } else if (parts[1] === 'sections' && parts.length === 3) {
      const v = value as { position?: unknown; comment?: unknown };
      if (!v || typeof v !== 'object' || typeof v.position !== 'number') { problems.push({ key, message: 'expected { position: NUMBER, comment? }' }); continue; }
      sections.set(parts[2], { position: v.position, comment: v.comment, rules: [] });
    } else if (parts[1] === 'rules' && parts.length === 4) {
      let list = rulesOf.get(parts[2]);
      if (!list) rulesOf.set(parts[2], (list = []));
      list.push([parts[3], value]);
    } else problems.push({ key, message: 'not a key tapwall knows (policy/settings, workloads/, groups/, services/, sections/, rules/SECTION/N)' });
  }
  for (const [section, list] of rulesOf) {
    const s = sections.get(section);
    if (!s) { for (const [n] of list) problems.push({ key: `policy/rules/${section}/${n}`, message: `a rule of section '${section}', which has no policy/sections/${section} key` }); continue; }
    s.rules = list;
  }
  for (const kind of ['workloads', 'groups', 'services']) if (Object.keys(maps[kind]).length > 0) doc[kind] = maps[kind];
  const ordered = [...sections.entries()].sort((a, b) => a[1].position - b[1].position || (a[0] < b[0] ? -1 : 1));
  const ruleKeys: string[][] = [];
  doc.sections = ordered.map(([name, s]) => {
    s.rules.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    ruleKeys.push(s.rules.map(([n]) => `policy/rules/${name}/${n}`));
    const out: Record<string, unknown> = { name, rules: s.rules.map(([, r]) => r) };
    if (s.comment !== undefined) out.comment = s.comment;
    return out;
  });
  // Where each section and rule came from, for messages (prepare.ts: keyOfPathIn).
  return { doc, problems, sections: ordered.map(([name], k) => ({ name, rules: ruleKeys[k] })) };
}

interface Stored { value: string; mod: number }

export class EtcdStore implements PolicyStore {
  client: Etcd3;
  readonly prefix: string;
  private readonly keys = new Map<string, Stored>();
  private revision = 0;
  private policyRevision = 0;
  private tagsRevision = 0;
  private readonly listeners = new Set<(key: StoreKey, state: StoreState) => void>();
  /** The live watch per prefix; created once, resumed by the client after a break, replaced only when etcd cancels it. */
  private readonly watchers = new Map<string, Watcher>();
  /** The revision of the last full read: watch events at or below it are already in the view. */
  private readRevision = 0;
  private pendingPolicy = false;
  private pendingTags = false;
  private flushScheduled = false;
  private closed = false;
  private resyncing: Promise<void> | null = null;
  private hostLease: Lease | null = null;
  private hostInfo: Record<string, unknown> | null = null;
  private hostUpdate: NodeJS.Timeout | null = null;
  connected = false;
  /** When the store last had a complete, current view (ms since epoch), or null. */
  syncedAt: number | null = null;
  /** Watches started again from scratch (reconnection, compaction). */
  watchRestarts = 0;
  /** Resyncs forced because the revision to resume from was compacted. */
  compactions = 0;
  lastError: string | null = null;
  /** Called when the connection state changes (logs). */
  onConnection: ((connected: boolean, why: string) => void) | null = null;

  constructor(readonly opts: EtcdOptions) {
    this.prefix = `${(opts.prefix ?? '/tapwall').replace(/\/+$/, '')}/`;
    this.client = this.newClient();
  }

  private newClient(): Etcd3 {
    const opts = this.opts;
    const tls = Boolean(opts.ca || opts.cert || opts.key);
    return new Etcd3({
      hosts: etcdEndpoints(opts.url, tls),
      credentials: tls ? {
        rootCertificate: opts.ca ? readFileSync(opts.ca) : Buffer.alloc(0),
        certChain: opts.cert ? readFileSync(opts.cert) : undefined,
        privateKey: opts.key ? readFileSync(opts.key) : undefined,
      } : undefined,
      dialTimeout: 3000,
      // A broken watch stream is retried within a second (the default backs off up to 30 s: too long to be fail-static in).
      faultHandling: { watchBackoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: 1000 }) as never },
    });
  }

  /** Recoveries: the client was replaced after it failed inside (see recover()). */
  recoveries = 0;

  /**
   * Start over with a new client: for when the client library fails inside
   * (it throws from its stream handlers on some races). Watches are made
   * anew after a full read, and the host registration is renewed.
   */
  recover(why: string): void {
    if (this.closed) return;
    this.recoveries++;
    const old = this.client;
    this.client = this.newClient();
    this.watchers.clear();
    this.creating.clear();
    this.hostLease = null;
    this.setConnected(false, `client replaced: ${why}`);
    try { old.close(); } catch { /* already broken */ }
    void this.resync('recover').then(async () => {
      const info = this.hostInfo;
      if (info) await this.registerHost(String(info.host), info);
    }).catch((e) => this.retryLater(e));
  }

  /** Read everything and start watching; throws when etcd cannot be reached at start. */
  async open(): Promise<void> {
    await this.resync('start');
  }

  private full(k: string): string {
    return this.prefix + k;
  }

  private setConnected(v: boolean, why: string): void {
    if (this.connected === v) return;
    this.connected = v;
    if (!v) this.lastError = why;
    this.onConnection?.(v, why);
  }

  /** Read every key at one revision, replace the view, and watch from the next revision. */
  private resync(why: string): Promise<void> {
    if (this.resyncing) return this.resyncing;
    if (why !== 'start') this.watchRestarts++;
    this.resyncing = (async () => {
      try {
        // Live watches are left alone (cancelling one races with its events in the client library);
        // what they bring at or below this read's revision is skipped in onData.
        const res = await this.client.getAll().prefix(this.prefix).exec();
        const rev = Number(res.header.revision);
        const before = new Map(this.keys);
        this.keys.clear();
        let policyRev = 0, tagsRev = 0;
        for (const kv of res.kvs) {
          const k = kv.key.toString().slice(this.prefix.length);
          const mod = Number(kv.mod_revision);
          if (!k.startsWith('policy/') && !k.startsWith('tags/') && !k.startsWith('flows/')) continue;
          this.keys.set(k, { value: kv.value.toString(), mod });
          if (k.startsWith('policy/')) policyRev = Math.max(policyRev, mod);
          else if (k.startsWith('tags/')) tagsRev = Math.max(tagsRev, mod);
        }
        const changed = (p: string) => {
          const a = [...before].filter(([k]) => k.startsWith(p)), b = [...this.keys].filter(([k]) => k.startsWith(p));
          return a.length !== b.length || b.some(([k, v]) => before.get(k)?.value !== v.value);
        };
        const policyChanged = changed('policy/'), tagsChanged = changed('tags/');
        // A deletion leaves no key to carry its revision: when the view changed, the revision read at stands for it.
        if (why === 'start') { this.policyRevision = policyRev; this.tagsRevision = tagsRev; }
        else {
          if (policyChanged) this.policyRevision = Math.max(this.policyRevision, rev);
          if (tagsChanged) this.tagsRevision = Math.max(this.tagsRevision, rev);
        }
        this.revision = Math.max(this.revision, rev);
        this.readRevision = rev;
        this.startWatch(rev + 1);
        this.syncedAt = Date.now();
        this.setConnected(true, why);
        if (why !== 'start') {
          if (policyChanged) this.pendingPolicy = true;
          if (tagsChanged) this.pendingTags = true;
          this.scheduleFlush();
        }
      } finally {
        this.resyncing = null;
      }
    })();
    return this.resyncing;
  }

  private readonly creating = new Set<string>();

  /** Watch every prefix that has no live watch, from `from` on. */
  private startWatch(from: number): void {
    if (this.closed) return;
    for (const sub of ['policy/', 'tags/', 'flows/']) {
      if (this.watchers.has(sub) || this.creating.has(sub)) continue;
      this.creating.add(sub);
      let wasDisconnected = false;
      const w = this.client.watch().prefix(this.full(sub)).startRevision(String(from)).create();
      // create() resolves when the watch is established; the watcher object is what we keep.
      void w.then((watcher) => {
        this.creating.delete(sub);
        if (this.closed) { void watcher.cancel().catch(() => undefined); return; }
        this.watchers.set(sub, watcher);
        watcher.on('data', (res) => this.onData(res.events, Number(res.header.revision)));
        watcher.on('disconnected', (err: Error) => {
          wasDisconnected = true;
          this.setConnected(false, `watch disconnected: ${err.message}`);
        });
        watcher.on('connected', () => {
          if (!wasDisconnected) return;
          wasDisconnected = false;
          // Back after a break: read everything again rather than trust that nothing was skipped.
          void this.resync('reconnect').catch((e) => this.retryLater(e));
        });
        watcher.on('error', (err: Error) => {
          // A cancelled watch (the client has dropped it): the revision to resume from was compacted,
          // or the server ended it. Read everything again and watch this prefix anew.
          if (/compact/i.test(err.message)) this.compactions++;
          if (this.watchers.get(sub) === watcher) this.watchers.delete(sub);
          this.setConnected(false, `watch ended: ${err.message}`);
          void this.resync('watch ended').catch((e) => this.retryLater(e));
        });
      }).catch((e: Error) => { this.creating.delete(sub); this.retryLater(e); });
    }
  }

  private retryLater(e: Error): void {
    if (this.closed) return;
    this.setConnected(false, e.message);
    setTimeout(() => { void this.resync('retry').catch((err) => this.retryLater(err)); }, 1000).unref();
  }

  private onData(events: Array<{ type: string; kv: IKeyValue }>, revision: number): void {
    for (const ev of events) {
      if (Number(ev.kv.mod_revision) <= this.readRevision) continue; // the last full read has it already
      const k = ev.kv.key.toString().slice(this.prefix.length);
      if (ev.type === 'Delete') this.keys.delete(k);
      else this.keys.set(k, { value: ev.kv.value.toString(), mod: Number(ev.kv.mod_revision) });
      if (k.startsWith('policy/')) { this.policyRevision = Math.max(this.policyRevision, revision); this.pendingPolicy = true; }
      else if (k.startsWith('tags/')) { this.tagsRevision = Math.max(this.tagsRevision, revision); this.pendingTags = true; }
      else if (k.startsWith('flows/')) this.flowListener?.(k.slice('flows/'.length), ev.type === 'Delete' ? null : ev.kv.value.toString());
    }
    this.revision = Math.max(this.revision, revision);
    this.syncedAt = Date.now();
    this.setConnected(true, 'watch data');
    this.scheduleFlush();
  }

  /** Called with a workload's handed-over connections when they appear (null when the key goes). */
  flowListener: ((workload: string, value: string | null) => void) | null = null;

  /** Report the changes of this tick at once, policy first; held while a large write is open. */
  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      if (this.epochOpen()) return; // the writer's closing transaction brings the rest
      const state = this.snapshot();
      if (this.pendingPolicy) { this.pendingPolicy = false; for (const l of this.listeners) l('policy', state); }
      if (this.pendingTags) { this.pendingTags = false; for (const l of this.listeners) l('tags', state); }
    });
  }

  /** When the policy was last written by a tapwall writer (the epoch key's time, ms), or null. */
  policyWrittenAt(): number | null {
    try {
      const at = Date.parse(String((JSON.parse(this.keys.get('policy/epoch')?.value ?? 'null') as { at?: string } | null)?.at));
      return Number.isFinite(at) ? at : null;
    } catch {
      return null;
    }
  }

  private epochOpen(): boolean {
    const e = this.keys.get('policy/epoch');
    if (!e) return false;
    try {
      return (JSON.parse(e.value) as { writing?: boolean }).writing === true;
    } catch {
      return false;
    }
  }

  private policyKeys(): Map<string, string> {
    const out = new Map<string, string>();
    for (const [k, v] of this.keys) if (k.startsWith('policy/')) out.set(k, v.value);
    return out;
  }

  /** The policy part of the view, assembled once per change of a policy key (a tag change reuses it). */
  private policyView: StoreState['policy'] | null = null;

  private snapshot(): StoreState {
    return { revision: this.revision, policy: this.policyPart(), tags: this.tagsPart() };
  }

  private policyPart(): StoreState['policy'] {
    if (this.policyView !== null && this.policyView.revision === this.policyRevision) return this.policyView;
    const { doc, problems, sections } = keysToDocument(this.policyKeys());
    this.policyView = {
      text: JSON.stringify(doc, null, 1), source: `etcd:${this.prefix}policy`, revision: this.policyRevision,
      assembled: true, data: doc, keyProblems: problems.map((p) => ({ key: this.full(p.key), message: p.message })), keyIndex: { prefix: this.full(''), sections },
    };
    return this.policyView;
  }

  private tagsPart(): StoreState['tags'] {
    const tags: TagMap = Object.create(null) as TagMap;
    for (const [k, v] of this.keys) {
      if (!k.startsWith('tags/')) continue;
      try {
        const list = JSON.parse(v.value) as unknown;
        if (Array.isArray(list)) tags[k.slice(5)] = list as TagMap[string];
      } catch {
        // A tag key that is not JSON adds no tags; the policy problems say nothing of it, the log does.
      }
    }
    return { value: tags, revision: this.tagsRevision };
  }

  async read(): Promise<StoreState> {
    return this.snapshot();
  }

  async refresh(): Promise<void> {
    await this.resync('refresh');
  }

  watch(listener: (key: StoreKey, state: StoreState) => void): () => void {
    this.listeners.add(listener);
    return () => { this.listeners.delete(listener); };
  }

  /** Write a whole policy document: only the keys that differ; compare-and-set on the epoch. */
  async putPolicy(text: string, expect: number | null): Promise<CasResult> {
    if (expect !== null && expect !== this.policyRevision) return { ok: false, revision: this.policyRevision };
    const doc = parseYaml(text, { maxAliasCount: 100 }) as Record<string, unknown>;
    const want = documentToKeys(doc);
    const have = this.policyKeys();
    const puts: Array<[string, string]> = [];
    const deletes: string[] = [];
    for (const [k, v] of want) if (have.get(k) !== v) puts.push([k, v]);
    // A document with no `workloads` leaves the inventory alone (libvirt's hook keeps it, VM by VM).
    const keepInventory = doc === null || typeof doc !== 'object' || !('workloads' in doc);
    for (const k of have.keys()) {
      if (k === 'policy/epoch' || want.has(k)) continue;
      if (keepInventory && k.startsWith('policy/workloads/')) continue;
      deletes.push(k);
    }
    const epoch = this.keys.get('policy/epoch');
    const epochMod = epoch?.mod ?? 0;
    const by = `${process.pid}`;
    const at = new Date().toISOString();
    const ops = puts.length + deletes.length;
    const small = ops + 1 <= TXN_OPS;
    const first = this.client.if(this.full('policy/epoch'), 'Mod', '==', epochMod);
    if (small) {
      const res = await first.then(
        ...puts.map(([k, v]) => this.client.put(this.full(k)).value(v)),
        ...deletes.map((k) => this.client.delete().key(this.full(k))),
        this.client.put(this.full('policy/epoch')).value(JSON.stringify({ writing: false, by, at })),
      ).commit();
      if (!res.succeeded) return { ok: false, revision: Math.max(this.policyRevision, Number(res.header.revision)) };
      return this.committed(Number(res.header.revision));
    }
    // Too large for one transaction: open the epoch, write in batches, close it; readers hold the change meanwhile.
    const open = await first.then(this.client.put(this.full('policy/epoch')).value(JSON.stringify({ writing: true, by, at }))).commit();
    if (!open.succeeded) return { ok: false, revision: Math.max(this.policyRevision, Number(open.header.revision)) };
    const all = [...puts.map(([k, v]) => () => this.client.put(this.full(k)).value(v)), ...deletes.map((k) => () => this.client.delete().key(this.full(k)))];
    try {
      for (let i = 0; i < all.length; i += TXN_OPS) {
        await this.client.if(this.full('policy/epoch'), 'Create', '>', 0).then(...all.slice(i, i + TXN_OPS).map((f) => f())).commit();
      }
    } finally {
      // Closed whatever happened: a half-written change is then visible as such (and validated like any other).
      const close = await this.client.put(this.full('policy/epoch')).value(JSON.stringify({ writing: false, by, at })).exec();
      this.lastClose = Number(close.header.revision);
    }
    return this.committed(this.lastClose);
  }

  private lastClose = 0;

  /** A policy write went through at `revision`. */
  private async committed(revision: number): Promise<CasResult> {
    await this.caughtUp(revision);
    return { ok: true, revision: Math.max(this.policyRevision, revision) };
  }

  /** Wait until the watch has brought `revision` (5 s at most, then read everything), so reads see a write. */
  private async caughtUp(revision: number): Promise<void> {
    const until = Date.now() + 5000;
    while (this.revision < revision && Date.now() < until && !this.closed) await new Promise((r) => setTimeout(r, 2));
    if (this.revision < revision && !this.closed) await this.resync('after write');
  }

  /** Write dynamic tags: only the workloads whose list changed, each compared with the revision read. */
  async putTags(tags: TagMap, expect: number | null): Promise<CasResult> {
    if (expect !== null && expect !== this.tagsRevision) return { ok: false, revision: this.tagsRevision };
    const current = this.tagsPart().value;
    const names = new Set([...Object.keys(current), ...Object.keys(tags)]);
    const changes: Array<[string, string | null]> = [];
    for (const w of names) {
      const cw = tagsOf(current, w), tw = tagsOf(tags, w);
      const a = cw ? JSON.stringify(cw) : null, b = tw && tw.length > 0 ? JSON.stringify(tw) : null;
      if (a !== b) changes.push([w, b]);
    }
    if (changes.length === 0) return { ok: true, revision: this.tagsRevision };
    let cmp = this.client.if(this.full(`tags/${changes[0][0]}`), 'Mod', '==', this.keys.get(`tags/${changes[0][0]}`)?.mod ?? 0);
    for (const [w] of changes.slice(1)) cmp = cmp.and(this.full(`tags/${w}`), 'Mod', '==', this.keys.get(`tags/${w}`)?.mod ?? 0);
    const res = await cmp.then(...changes.map(([w, v]) => (v === null ? this.client.delete().key(this.full(`tags/${w}`)) : this.client.put(this.full(`tags/${w}`)).value(v)))).commit();
    if (!res.succeeded) return { ok: false, revision: Math.max(this.tagsRevision, Number(res.header.revision)) };
    const r = Number(res.header.revision);
    await this.caughtUp(r);
    return { ok: true, revision: Math.max(this.tagsRevision, r) };
  }

  /** Register this daemon as alive (a leased key), and keep it so; `update` refreshes what it says. */
  async registerHost(host: string, info: Record<string, unknown>): Promise<void> {
    this.hostInfo = { host, ...info };
    const lease = this.client.lease(this.opts.leaseSeconds ?? HOST_LEASE_SECONDS, { autoKeepAlive: true });
    lease.on('lost', (err: Error) => {
      // The lease ran out (etcd unreachable for longer than its TTL): register again once back.
      this.setConnected(false, `host lease lost: ${err.message}`);
      this.hostLease = null;
      const retry = () => { if (!this.closed && this.hostInfo) void this.registerHost(host, this.hostInfo).catch(() => setTimeout(retry, 1000).unref()); };
      setTimeout(retry, 1000).unref();
    });
    await lease.put(this.full(`hosts/${host}`)).value(JSON.stringify(this.hostInfo)).exec();
    this.hostLease = lease;
  }

  /** Say what this host enforces now (debounced: at most every 200 ms). */
  updateHost(info: Record<string, unknown>): void {
    if (!this.hostInfo) return;
    Object.assign(this.hostInfo, info);
    if (this.hostUpdate) return;
    this.hostUpdate = setTimeout(() => {
      this.hostUpdate = null;
      const lease = this.hostLease;
      if (!lease || this.closed || !this.hostInfo) return;
      void lease.put(this.full(`hosts/${String(this.hostInfo.host)}`)).value(JSON.stringify(this.hostInfo)).exec().catch(() => undefined);
    }, 200);
    this.hostUpdate.unref();
  }

  /** Put one workload's record (the inventory: libvirt's hook); its other keys are left alone. */
  async putWorkload(name: string, record: Record<string, unknown>): Promise<number> {
    const r = await this.client.put(this.full(`policy/workloads/${name}`)).value(JSON.stringify(record)).exec();
    return Number(r.header.revision);
  }

  /** Remove a workload's record if it still says `host` (a VM that moved on keeps its new record). */
  async deleteWorkloadOn(name: string, host: string): Promise<boolean> {
    const key = this.full(`policy/workloads/${name}`);
    const cur = await this.client.get(key).exec();
    const kv = cur.kvs[0];
    if (!kv) return false;
    let holder: unknown;
    try { holder = (JSON.parse(kv.value.toString()) as { host?: unknown }).host; } catch { holder = undefined; }
    if (holder !== host) return false;
    const res = await this.client.if(key, 'Mod', '==', Number(kv.mod_revision)).then(this.client.delete().key(key)).commit();
    return res.succeeded;
  }

  /** Hand a workload's connections to its new host (a leased key, gone after a minute). */
  async putFlows(workload: string, value: string): Promise<void> {
    const lease = this.client.lease(60, { autoKeepAlive: false });
    await lease.put(this.full(`flows/${workload}`)).value(value).exec();
  }

  async deleteFlows(workload: string): Promise<void> {
    await this.client.delete().key(this.full(`flows/${workload}`)).exec();
  }

  /** Flows handed over for a workload, if any are waiting. */
  flowsOf(workload: string): string | null {
    return this.keys.get(`flows/${workload}`)?.value ?? null;
  }

  /** Every registered host and what it says, read now. */
  async hosts(): Promise<Array<Record<string, unknown>>> {
    const res = await this.client.getAll().prefix(this.full('hosts/')).strings();
    return Object.values(res).map((v) => { try { return JSON.parse(v) as Record<string, unknown>; } catch { return { error: 'not JSON', raw: v }; } });
  }

  /**
   * Go away as a crashed host would: stop the keepalives without revoking the
   * lease (it expires on its own) and close the connection. For tests and
   * failure drills.
   */
  abandon(): void {
    this.closed = true;
    if (this.hostUpdate) clearTimeout(this.hostUpdate);
    this.hostLease?.release();
    this.hostLease = null;
    this.hostInfo = null;
    this.listeners.clear();
    void this.cancelWatches().finally(() => this.client.close());
  }

  /** Cancel every watch (a watch left open keeps the client reconnecting, and the process alive, after close); 2 s at most. */
  private async cancelWatches(): Promise<void> {
    const list = [...this.watchers.values()];
    this.watchers.clear();
    const timeout = new Promise<void>((r) => setTimeout(r, 2000).unref());
    await Promise.race([Promise.all(list.map((w) => w.cancel().catch(() => undefined))), timeout]);
  }

  /** Stop watching, revoke this host's registration, close the connection; resolves when done (2-4 s at most). */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    if (this.hostUpdate) clearTimeout(this.hostUpdate);
    const lease = this.hostLease;
    this.hostLease = null;
    this.listeners.clear();
    const client = this.client;
    const revoke = () => (lease ? Promise.race([lease.revoke().catch(() => undefined), new Promise<void>((r) => setTimeout(r, 2000).unref())]) : undefined);
    return this.cancelWatches().then(revoke).finally(() => client.close());
  }
}
