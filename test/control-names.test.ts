// Names from Object.prototype are names like any other: a workload called
// `constructor` or `toString` loads, compiles, runs and takes tags (it broke
// `tapwall run` and every tag call for it: "tags[name]?.map is not a function").
import t from 'tap';
import { Controller } from '../src/control/controller.js';
import { MemoryStore } from '../src/control/store.js';
import type { CompiledPolicy } from '../src/policy/compile.js';

const POLICY = `
default: drop
workloads:
  constructor: { nic: twn-c, mac: "02:61:00:00:00:01", ips: [10.61.0.1], tags: [web] }
  toString:    { nic: twn-t, mac: "02:61:00:00:00:02", ips: [10.61.0.2], tags: [app] }
  valueOf:     { nic: twn-v, mac: "02:61:00:00:00:03", ips: [10.61.0.3] }
groups:
  quarantined: { tags: [quarantine] }
  hasOwnProperty: { workloads: [valueOf] }
sections:
  - name: s
    rules:
      - { id: q, from: quarantined, to: any, action: drop }
`;

t.test('workloads and groups named after Object.prototype members', async (t) => {
  let compiled: CompiledPolicy | null = null;
  const controller = new Controller(new MemoryStore(POLICY), { setPolicy: (c) => { compiled = c; } });
  await controller.start();
  t.same([...compiled!.points.keys()].sort(), ['twn-c', 'twn-t', 'twn-v'], 'every vNIC compiled');
  const r = await controller.changeTags('constructor', { add: ['quarantine'], reason: 'test', by: 'test', ttlSeconds: null });
  t.same(r.dynamic.map((d) => d.tag), ['quarantine'], 'a tag on `constructor`');
  t.ok(compiled!.groups.get('quarantined')!.members.has('constructor'), 'and it is in the quarantine group');
  const r2 = await controller.changeTags('toString', { add: ['quarantine'], reason: 'test', by: 'test', ttlSeconds: null });
  t.same(r2.dynamic.map((d) => d.tag), ['quarantine'], 'a tag on `toString`');
  const r3 = await controller.changeTags('constructor', { remove: ['quarantine'], reason: 'test', by: 'test', ttlSeconds: null });
  t.same(r3.dynamic, [], 'removed again');
  t.notOk(compiled!.groups.get('quarantined')!.members.has('constructor'), 'out of the group');
  t.ok(compiled!.groups.get('hasOwnProperty')!.members.has('valueOf'), 'a group called hasOwnProperty holds valueOf');
  controller.stop();
});
