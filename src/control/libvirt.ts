/**
 * libvirt's hook for QEMU domains (/etc/libvirt/hooks/qemu): libvirt runs it
 * as `qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain XML on
 * standard input. `tapwall libvirt-hook` is that program (see deploy/libvirt-qemu-hook):
 *
 *   prepare, start, started, reconnect, restore   register the domain's vNICs as workloads on this host
 *   stopped, release                              remove them (only if this host still holds them:
 *                                                 a migrated VM's old host must not delete its new record)
 *   anything else                                 nothing
 *
 * Each `<interface>` with a `<target dev>` (the TAP libvirt makes) and a
 * `<mac address>` becomes a workload: named after the domain (`-1`, `-2`...
 * for the second and later vNICs), its addresses from the interface's
 * `<ip address>` elements, its tags from the domain metadata element
 * `<tapwall:vm xmlns:tapwall="urn:tapwall:1" tags="web,prod"/>`
 * (`<tapwall:interface mac="..." tags="..." ips="..."/>` inside it for one vNIC).
 * A migrating VM's destination runs `started` with its own --host: the
 * record moves, and the old host hands its connections over.
 */
import { XMLParser } from 'fast-xml-parser';

export interface DomainVnic { name: string; nic: string; mac: string; ips: string[]; tags: string[] }

export class DomainXmlError extends Error {
  readonly code = 'EDOMAINXML';
}

const asList = <T>(v: T | T[] | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
const splitList = (v: unknown): string[] => (typeof v === 'string' ? v.split(',').map((x) => x.trim()).filter(Boolean) : []);

/** The vNICs a domain XML describes, as workloads (name, nic, mac, ips, tags). */
export function domainVnics(xml: string): { domain: string; vnics: DomainVnic[] } {
  const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@', removeNSPrefix: false, processEntities: false });
  let doc: Record<string, unknown>;
  try {
    doc = parser.parse(xml) as Record<string, unknown>;
  } catch (e) {
    throw new DomainXmlError(`the domain XML does not parse: ${(e as Error).message}`);
  }
  const domain = doc.domain as Record<string, unknown> | undefined;
  if (!domain || typeof domain !== 'object') throw new DomainXmlError('expected a <domain> document on standard input');
  const name = String(domain.name ?? '');
  if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]*$/.test(name)) throw new DomainXmlError(`the domain name '${name}' cannot be a workload name (letters, digits, _ . : -)`);
  // tapwall's metadata: tags for the domain, and per interface (by MAC).
  const meta = (domain.metadata ?? {}) as Record<string, unknown>;
  const vmMeta = Object.entries(meta).find(([k, v]) => k.endsWith(':vm') && typeof v === 'object' && v !== null && String((v as Record<string, unknown>)['@xmlns:' + k.split(':')[0]] ?? '') === 'urn:tapwall:1')?.[1] as Record<string, unknown> | undefined;
  const domainTags = splitList(vmMeta?.['@tags']);
  const perMac = new Map<string, { tags: string[]; ips: string[] }>();
  if (vmMeta) {
    for (const [k, v] of Object.entries(vmMeta)) {
      if (!k.endsWith(':interface')) continue;
      for (const i of asList(v as Record<string, unknown> | Array<Record<string, unknown>>)) {
        const mac = String(i['@mac'] ?? '').toLowerCase();
        if (mac) perMac.set(mac, { tags: splitList(i['@tags']), ips: splitList(i['@ips']) });
      }
    }
  }
  const devices = (domain.devices ?? {}) as Record<string, unknown>;
  const vnics: DomainVnic[] = [];
  for (const iface of asList(devices.interface as Record<string, unknown> | Array<Record<string, unknown>> | undefined)) {
    const target = (iface.target as Record<string, unknown> | undefined)?.['@dev'];
    const mac = String((iface.mac as Record<string, unknown> | undefined)?.['@address'] ?? '').toLowerCase();
    if (typeof target !== 'string' || !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac)) continue; // no TAP (yet) or no MAC: nothing to police
    const ips = asList(iface.ip as Record<string, unknown> | Array<Record<string, unknown>> | undefined).map((i) => String(i['@address'] ?? '')).filter(Boolean);
    const extra = perMac.get(mac);
    vnics.push({
      name: vnics.length === 0 ? name : `${name}-${vnics.length}`,
      nic: target, mac,
      ips: [...ips, ...(extra?.ips ?? [])],
      tags: [...new Set([...domainTags, ...(extra?.tags ?? [])])],
    });
  }
  return { domain: name, vnics };
}

export type HookAction = 'register' | 'unregister' | 'none';

export function hookAction(operation: string): HookAction {
  if (['prepare', 'start', 'started', 'reconnect', 'restore'].includes(operation)) return 'register';
  if (['stopped', 'release'].includes(operation)) return 'unregister';
  return 'none';
}
