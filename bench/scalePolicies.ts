/**
 * The policies of `tapwall bench scale`, as policy documents (plain data,
 * what a YAML or JSON file parses to), generated from a seed.
 *
 *   rules10k   10,000 rules over 10,000 workloads: 500 applications of
 *              three tiers (web, app, db) in two environments; per
 *              application a group, and a group per tier of it (1,500
 *              allOf groups); an emergency section that drops to and from
 *              the `quarantine` tag; per application web->app, app->db and
 *              any->web; the rest cross-application app->db rules on ports.
 *   groups1m   one group of 1,000,000 scattered addresses (10.0.0.0/8)
 *              against one of 100,000 (172.16.0.0/12), both directions,
 *              with 20 workloads whose vNICs the rules apply at.
 *   rules100k  100,000 rules: per-address rules from external /32s and
 *              /24s to the web tier, over the three tiers of rules10k's
 *              first application.
 */
import { prng } from '../tools/prng.js';

export type ScaleCase = 'rules10k' | 'groups1m' | 'rules100k';
export const SCALE_CASES: ScaleCase[] = ['rules10k', 'groups1m', 'rules100k'];

type Doc = Record<string, unknown>;

const TIERS = ['web', 'app', 'db'] as const;

function ip4(n: number): string {
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

function mac(i: number): string {
  const h = (x: number) => (x & 255).toString(16).padStart(2, '0');
  return `02:00:${h(i >>> 24)}:${h(i >>> 16)}:${h(i >>> 8)}:${h(i)}`;
}

/** Workload i of the application workloads: application i % apps, tier (i / apps) % 3. */
export function scaleWorkload(i: number, apps: number): { name: string; ip: string; app: number; tier: (typeof TIERS)[number] } {
  return { name: `w${i}`, ip: ip4(0x0a000000 + i + 1), app: i % apps, tier: TIERS[Math.floor(i / apps) % 3] };
}

function appWorkloads(count: number, apps: number): Doc {
  const out: Doc = {};
  for (let i = 0; i < count; i++) {
    const w = scaleWorkload(i, apps);
    out[w.name] = { nic: `tws${i}`, mac: mac(i + 1), ips: [w.ip], tags: [`app-${w.app}`, w.tier, i % 2 ? 'prod' : 'dev'] };
  }
  return out;
}

const EMERGENCY = {
  name: 'emergency',
  rules: [
    { id: 'quarantine-out', from: 'quarantined', to: 'any', action: 'drop' },
    { id: 'quarantine-in', from: 'any', to: 'quarantined', action: 'drop' },
  ],
};

export function scalePolicy(which: ScaleCase, seed = 1): Doc {
  const r = prng(seed);
  if (which === 'rules10k') {
    const apps = 500, workloads = 10_000;
    const groups: Doc = { quarantined: { tags: ['quarantine'] }, web: { tags: ['web'] }, app: { tags: ['app'] }, db: { tags: ['db'] } };
    for (let a = 0; a < apps; a++) {
      groups[`app-${a}`] = { tags: [`app-${a}`] };
      for (const t of TIERS) groups[`app-${a}-${t}`] = { tags: { allOf: [`app-${a}`, t] } };
    }
    const rules: Doc[] = [];
    for (let a = 0; a < apps; a++) {
      rules.push({ id: `a${a}-web-app`, from: `app-${a}-web`, to: `app-${a}-app`, services: ['tcp/8080'], action: 'allow' });
      rules.push({ id: `a${a}-app-db`, from: `app-${a}-app`, to: `app-${a}-db`, services: ['tcp/5432'], action: 'allow' });
      rules.push({ id: `a${a}-in`, from: 'any', to: `app-${a}-web`, services: ['tcp/443'], action: 'allow' });
    }
    for (let i = rules.length; i < 10_000 - EMERGENCY.rules.length; i++) {
      const a = Math.floor(r() * apps), b = Math.floor(r() * apps);
      rules.push({ id: `x${i}`, from: `app-${a}-app`, to: `app-${b}-db`, services: [`tcp/${6000 + (i % 20000)}`], action: r() < 0.9 ? 'allow' : 'reject' });
    }
    return { default: 'drop', spoofguard: true, workloads: appWorkloads(workloads, apps), groups, sections: [EMERGENCY, { name: 'application', rules }] };
  }
  if (which === 'groups1m') {
    const big = new Set<number>(), small = new Set<number>();
    while (big.size < 1_000_000) big.add(0x0a000000 + Math.floor(r() * 0x1000000));
    while (small.size < 100_000) small.add(0xac100000 + Math.floor(r() * 0x100000));
    const workloads: Doc = {};
    for (let i = 0; i < 20; i++) workloads[`w${i}`] = { nic: `tws${i}`, mac: mac(i + 1), ips: [`192.168.0.${i + 1}`], tags: [i < 10 ? 'web' : 'app'] };
    return {
      default: 'drop', spoofguard: true, workloads,
      groups: {
        quarantined: { tags: ['quarantine'] }, web: { tags: ['web'] }, app: { tags: ['app'] },
        partners: { cidrs: [...big].map((n) => `${ip4(n)}/32`) },
        customers: { cidrs: [...small].map((n) => `${ip4(n)}/32`) },
      },
      sections: [EMERGENCY, {
        name: 'application',
        rules: [
          { id: 'partners-to-customers', from: 'partners', to: 'customers', services: ['tcp/443'], action: 'allow' },
          { id: 'customers-to-partners', from: 'customers', to: 'partners', services: ['udp/53', 'tcp/53'], action: 'allow' },
          { id: 'partners-to-web', from: 'partners', to: 'web', services: ['tcp/443'], action: 'allow' },
          { id: 'web-to-app', from: 'web', to: 'app', services: ['tcp/8080'], action: 'allow' },
          { id: 'customers-out', from: 'customers', to: 'any', action: 'reject' },
        ],
      }],
    };
  }
  // rules100k
  const apps = 1;
  const rules: Doc[] = [
    { id: 'web-app', from: 'app-0-web', to: 'app-0-app', services: ['tcp/8080'], action: 'allow' },
    { id: 'app-db', from: 'app-0-app', to: 'app-0-db', services: ['tcp/5432'], action: 'allow' },
  ];
  for (let i = rules.length; i < 100_000 - EMERGENCY.rules.length; i++) {
    const n = 0xac100000 + i;
    const from = i % 4 === 0 ? `${ip4(n & ~255)}/24` : `${ip4(n)}/32`;
    rules.push({ id: `ext-${i}`, from, to: 'web', services: [`tcp/${1024 + (i % 30000)}`], action: r() < 0.8 ? 'allow' : 'drop' });
  }
  const groups: Doc = { quarantined: { tags: ['quarantine'] }, web: { tags: ['web'] } };
  for (const t of TIERS) groups[`app-0-${t}`] = { tags: { allOf: ['app-0', t] } };
  return { default: 'drop', spoofguard: true, workloads: appWorkloads(30, apps), groups, sections: [EMERGENCY, { name: 'external', rules }] };
}
