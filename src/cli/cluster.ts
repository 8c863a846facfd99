/**
 * The CLI against the cluster store itself (`--store etcd://...`), from any
 * machine: apply or read the one policy, change a workload's tags, list the
 * hosts. Every write is the same compare-and-set the daemons' API does; the
 * daemons pick each change up through their watch.
 */
import { readFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { EtcdStore, type EtcdOptions } from '../control/etcdStore.js';
import { ControlError, storedPolicyCheck, tagsAfterChange, type TagChange } from '../control/controller.js';
import { tagsOf } from '../control/store.js';
import { policyParse } from '../policy/load.js';
import { PolicyError } from '../policy/errors.js';
import type { Policy } from '../policy/model.js';

export interface StoreCliOptions { store: string; etcdPrefix?: string; etcdCa?: string; etcdCert?: string; etcdKey?: string }

export async function storeOpen(o: StoreCliOptions): Promise<EtcdStore> {
  const opts: EtcdOptions = { url: o.store, prefix: o.etcdPrefix, ca: o.etcdCa, cert: o.etcdCert, key: o.etcdKey };
  const store = new EtcdStore(opts);
  try {
    await store.open();
  } catch (e) {
    await store.close();
    throw Object.assign(new Error(`cannot reach ${o.store}: ${(e as Error).message}`), { code: 'ESTORE' });
  }
  return store;
}

/** Refused by the store: a message and exit code 2, like the API's 4xx answers. */
export class StoreRefusal extends Error {
  readonly code = 'EUSAGE';
}

async function storedPolicy(store: EtcdStore): Promise<{ policy: Policy; revision: number; tagsRevision: number; tags: Awaited<ReturnType<EtcdStore['read']>>['tags']['value'] }> {
  const state = await store.read();
  const { policy, problems } = storedPolicyCheck(state.policy.text, state.policy.source, state.policy);
  if (!policy) throw new PolicyError(problems);
  return { policy, revision: state.policy.revision, tagsRevision: state.tags.revision, tags: state.tags.value };
}

export async function clusterApply(o: StoreCliOptions, file: string, ifRevision: string | undefined): Promise<string> {
  const text = readFileSync(file, 'utf8');
  const { policy, problems } = policyParse(text, file, { shadows: false });
  if (!policy) throw new PolicyError(problems.filter((p) => p.severity === 'error'));
  const store = await storeOpen(o);
  try {
    const before = (await store.read()).policy.revision;
    const expect = ifRevision === undefined ? before : Number(ifRevision);
    const r = await store.putPolicy(text, expect);
    if (!r.ok) throw new StoreRefusal(`the policy in ${o.store} changed since revision ${expect}: it is now at ${r.revision}; read it again and reapply`);
    return `applied to ${o.store}: revision ${r.revision} (${policy.sections.reduce((n, s) => n + s.rules.length, 0)} rules, ${policy.workloads.size} workloads); every host picks it up through its watch`;
  } finally {
    await store.close();
  }
}

export async function clusterGet(o: StoreCliOptions): Promise<{ revision: number; text: string }> {
  const store = await storeOpen(o);
  try {
    const state = await store.read();
    return { revision: state.policy.revision, text: stringify(state.policy.data) };
  } finally {
    await store.close();
  }
}

export async function clusterTag(o: StoreCliOptions, workload: string, change: TagChange): Promise<string> {
  const store = await storeOpen(o);
  try {
    const s = await storedPolicy(store);
    const { next } = tagsAfterChange(s.policy, s.tags, workload, change, Date.now());
    const r = await store.putTags(next, s.tagsRevision);
    if (!r.ok) throw new StoreRefusal(`the tags changed while this was written (now at revision ${r.revision}); try again`);
    const w = s.policy.workloads.get(workload)!;
    const tags = [...new Set([...w.tags, ...(tagsOf(next, workload) ?? []).map((t) => t.tag)])];
    return `${workload}: tags now ${tags.join(', ') || '(none)'} (store revision ${r.revision}); ${w.host ? `host ${w.host}` : 'every host'} enforces it as its watch brings it`;
  } catch (e) {
    if (e instanceof ControlError) throw new StoreRefusal(e.message);
    throw e;
  } finally {
    await store.close();
  }
}

/**
 * A host as `tapwall hosts` shows it. `behind`: store revisions between the
 * policy it enforces and the one the store holds (0 when current).
 * `behindSeconds`: how long the newest policy write it has not applied has
 * been waiting (null when current). Tags are not compared: a reader that
 * starts fresh cannot tell a tag revision from a later deletion's.
 */
export interface HostView {
  host: string; alive: boolean; vnics: string[]; workloads: number; enforcing: number | null; behind: number | null; behindSeconds: number | null;
  since: string | null; appliedAt: string | null;
}

/** Every host the inventory names or that is registered: alive (its lease holds) or not. */
export async function clusterHosts(o: StoreCliOptions): Promise<{ revision: number; hosts: HostView[] }> {
  const store = await storeOpen(o);
  try {
    const state = await store.read();
    const revision = state.policy.revision;
    const registered = await store.hosts();
    const byHost = new Map<string, HostView>();
    const doc = state.policy.data as { workloads?: Record<string, { host?: string; nic?: string }> };
    for (const w of Object.values(doc.workloads ?? {})) {
      if (typeof w?.host !== 'string') continue;
      const h = byHost.get(w.host) ?? { host: w.host, alive: false, vnics: [], workloads: 0, enforcing: null, behind: null, behindSeconds: null, since: null, appliedAt: null };
      h.workloads++;
      byHost.set(w.host, h);
    }
    const writtenAt = store.policyWrittenAt();
    for (const r of registered) {
      const name = String(r.host ?? '?');
      const h = byHost.get(name) ?? { host: name, alive: false, vnics: [], workloads: 0, enforcing: null, behind: null, behindSeconds: null, since: null, appliedAt: null };
      h.alive = true;
      h.vnics = Array.isArray(r.vnics) ? r.vnics.map(String) : [];
      h.enforcing = typeof r.enforcing === 'number' ? r.enforcing : null;
      h.behind = h.enforcing === null ? null : Math.max(0, revision - h.enforcing);
      h.behindSeconds = h.enforcing !== null && h.enforcing < revision && writtenAt !== null ? Math.max(0, Math.round((Date.now() - writtenAt) / 100) / 10) : null;
      h.since = typeof r.since === 'string' ? r.since : null;
      h.appliedAt = typeof r.appliedAt === 'string' ? r.appliedAt : null;
      byHost.set(name, h);
    }
    return { revision, hosts: [...byHost.values()].sort((a, b) => (a.host < b.host ? -1 : 1)) };
  } finally {
    await store.close();
  }
}

export function formatHosts(r: { revision: number; hosts: HostView[] }): string {
  const rows = [['HOST', 'STATE', 'VNICS', 'WORKLOADS', 'ENFORCING', 'BEHIND']];
  for (const h of r.hosts) {
    rows.push([h.host, h.alive ? 'alive' : 'DEAD', h.alive ? String(h.vnics.length) : '-', String(h.workloads), h.enforcing === null ? '-' : String(h.enforcing), h.behind === null ? '-' : h.behind === 0 ? 'current' : `${h.behind} revisions${h.behindSeconds === null ? '' : `, ${h.behindSeconds} s`}`]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  return [`policy revision ${r.revision}`, ...rows.map((row) => row.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd())].join('\n');
}
