// A tag change whose preparation fails after the store took it and the audit
// log recorded it (the record is written while the compiling thread works):
// the caller gets the error, the audit log says the change was refused next
// to its record, nothing is in force that the log does not show, and the
// stored change is put in force once it can be prepared (the store is read
// again a second later).
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Controller } from '../src/control/controller.js';
import { MemoryStore } from '../src/control/store.js';
import type { CompiledPolicy } from '../src/policy/compile.js';
import { preparerAround, tieredPolicy, until } from './fixtures.js';

const POLICY = tieredPolicy('twp', 63);

t.test('recorded, refused in the log, and put in force once it can be prepared', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-tagfail-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const auditPath = join(dir, 'audit.jsonl');
  // The second preparation fails, as a compiling thread that died would: the start prepares first, the tag change second.
  let calls = 0;
  const preparer = preparerAround((next) => (++calls === 2 ? Promise.reject(new Error('the compiling thread stopped')) : next()));
  let enforced: CompiledPolicy | null = null;
  const controller = new Controller(new MemoryStore(POLICY), { setPolicy: (c) => { enforced = c; } }, { preparer, auditPath });
  t.teardown(() => controller.stop());
  await controller.start();
  const quarantined = () => enforced!.groups.get('quarantined')!.members.has('web-1');

  await t.rejects(controller.changeTags('web-1', { add: ['quarantine'], reason: 'test', by: 'tester', ttlSeconds: null }), /compiling thread stopped/, 'the caller gets the error');
  t.notOk(quarantined(), 'and the quarantine is not in force yet');
  const audit = () => readFileSync(auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { action: string; revision?: number; by?: string });
  const [added, refused] = audit();
  t.match(added, { action: 'tag.added', by: 'tester' }, 'the stored change was recorded');
  t.match(refused, { action: 'policy.refused', by: 'tester' }, 'and its refusal next to it');

  await until('the stored change put in force', quarantined, 5000);
  const applied = audit().find((a) => a.action === 'tags.applied');
  t.ok(applied, 'recorded as applied from the store');
  t.equal(applied!.revision, added.revision, 'at the revision the change was stored at');
});
