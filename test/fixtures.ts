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
