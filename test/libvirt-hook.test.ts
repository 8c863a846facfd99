// libvirt's QEMU hook (deploy/libvirt-qemu-hook -> `tapwall libvirt-hook`), fed
// a real domain XML and the arguments libvirt passes, against a real etcd:
// starting the domain registers its vNICs as workloads of this host (TAP,
// MAC, addresses, tags from tapwall's metadata); a host that is not the VM's
// (after a migration) does not remove its record; stopping removes it.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { EtcdCluster } from '../bench/etcd.js';
import { domainVnics } from '../src/control/libvirt.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const xml = readFileSync(join(root, 'test/data/libvirt-web-7.xml'), 'utf8');
// `tapwall` on the PATH, as an installed package puts it.
const bin = mkdtempSync(join(tmpdir(), 'tw-bin-'));
writeFileSync(join(bin, 'tapwall'), `#!/bin/sh\nexec ${process.execPath} ${join(root, 'bin/tapwall.js')} "$@"\n`);
chmodSync(join(bin, 'tapwall'), 0o755);
const PATH = `${bin}:${process.env.PATH}`;

t.test('the domain XML read as workloads', async (t) => {
  t.same(domainVnics(xml), {
    domain: 'web-7',
    vnics: [
      { name: 'web-7', nic: 'twl-web7a', mac: '52:54:00:7a:00:01', ips: ['10.73.1.7', 'fd73::1:7'], tags: ['web', 'prod'] },
      { name: 'web-7-1', nic: 'twl-web7b', mac: '52:54:00:7a:00:02', ips: ['10.73.9.7'], tags: ['web', 'prod', 'backup'] },
    ],
  }, 'two vNICs with a TAP (the one on a libvirt network without a target is left out), addresses and tags');
  t.throws(() => domainVnics('<domain><name>bad name</name></domain>'), /cannot be a workload name/);
  t.throws(() => domainVnics('<notadomain/>'), /expected a <domain>/);
});

t.test('the hook against etcd, as libvirt runs it', async (t) => {
  const etcd = new EtcdCluster(1);
  await etcd.start();
  t.teardown(() => etcd.stop());
  const hook = (host: string, ...args: string[]) => spawnSync('sh', [join(root, 'deploy/libvirt-qemu-hook'), ...args], {
    input: xml, encoding: 'utf8', env: { ...process.env, TAPWALL_STORE: etcd.url, TAPWALL_HOST: host, PATH },
  });
  const get = (key: string) => spawnSync('etcdctl', ['--endpoints', etcd.url.replace('etcd://', ''), 'get', key, '--print-value-only'], { encoding: 'utf8', env: { ...process.env, ETCDCTL_API: '3' } }).stdout.trim();

  const started = hook('hv1', 'web-7', 'started', 'begin', '-');
  t.equal(started.status, 0, `started: exit 0 ${started.stderr}`);
  t.match(started.stdout, /registered web-7: twl-web7a 52:54:00:7a:00:01 10\.73\.1\.7 fd73::1:7 on hv1/);
  t.same(JSON.parse(get('/tapwall/policy/workloads/web-7')), { nic: 'twl-web7a', mac: '52:54:00:7a:00:01', ips: ['10.73.1.7', 'fd73::1:7'], tags: ['web', 'prod'], host: 'hv1' }, 'the workload record in etcd');
  t.match(JSON.parse(get('/tapwall/policy/workloads/web-7-1')), { nic: 'twl-web7b', host: 'hv1' }, 'and the second vNIC');
  t.equal(hook('hv1', 'web-7', 'migrate', 'begin', '-').stdout, '', 'other operations do nothing');

  t.equal(hook('hv2', 'web-7', 'started', 'begin', '-').status, 0, 'migrated: the destination host registers it');
  t.equal(JSON.parse(get('/tapwall/policy/workloads/web-7')).host, 'hv2', 'the record now says hv2');
  const oldStops = hook('hv1', 'web-7', 'stopped', 'end', '-');
  t.match(oldStops.stdout, /kept web-7: it is not \(or no longer\) on hv1/, "the old host's stop does not remove the moved VM");
  t.equal(JSON.parse(get('/tapwall/policy/workloads/web-7')).host, 'hv2');

  const stops = hook('hv2', 'web-7', 'release', 'end', '-');
  t.match(stops.stdout, /removed web-7 from hv2/, 'its host stopping it removes it');
  t.equal(get('/tapwall/policy/workloads/web-7'), '', 'gone from etcd');
  const bad = spawnSync('sh', [join(root, 'deploy/libvirt-qemu-hook'), 'web-7', 'start', 'begin', '-'], {
    input: '<domain><name>web-8</name></domain>', encoding: 'utf8', env: { ...process.env, TAPWALL_STORE: etcd.url, TAPWALL_HOST: 'hv1', PATH },
  });
  t.not(bad.status, 0, 'XML of another domain: refused (libvirt then refuses to start it)');
});
