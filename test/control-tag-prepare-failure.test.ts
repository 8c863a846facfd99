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
import { InlinePreparer, type DocumentRef, type Prepared, type Preparer } from '../src/control/prepare.js';
import { MemoryStore, type TagMap } from '../src/control/store.js';
import type { CompiledPolicy } from '../src/policy/compile.js';
import { tieredPolicy, until } from './fixtures.js';

const POLICY = tieredPolicy('twp', 63);

/** An inline preparer whose `failOn`-th call (1-based) fails, as a compiling thread that died would. */
class FailingOnce implements Preparer {
  calls = 0;
  private readonly inner = new InlinePreparer();
  constructor(private readonly failOn: number) {}
  async prepare(doc: DocumentRef, tags: TagMap, host: string | null): Promise<Prepared> {
    if (++this.calls === this.failOn) throw new Error('the compiling thread stopped');
    return this.inner.prepare(doc, tags, host);
  }
  installed(compiled: CompiledPolicy): void { this.inner.installed(compiled); }
  async close(): Promise<void> {}
}

t.test('recorded, refused in the log, and put in force once it can be prepared', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-tagfail-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const auditPath = join(dir, 'audit.jsonl');
  const preparer = new FailingOnce(2); // the start prepares first; the tag change is the second call
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
