// The first tag change after a start goes against what the start prepared:
// the controller prepares its first policy with the preparer every later
// change goes through, so that preparer already holds the validated document
// and the compiled policy. (A start that used a preparer of its own left the
// first quarantine to validate the whole document again and compile every
// vNIC: 0.5 s at 10,000 rules, where later ones took 7 ms.)
import t from 'tap';
import { Controller } from '../src/control/controller.js';
import type { DocumentRef, Prepared } from '../src/control/prepare.js';
import { MemoryStore, type TagMap } from '../src/control/store.js';
import type { CompiledPolicy } from '../src/policy/compile.js';
import { preparerAround, tieredPolicy } from './fixtures.js';

// web-1 and the quarantine group, as the other control-plane tests have them.
const POLICY = tieredPolicy('twf', 62);

t.test('the start and the first tag change go through the same preparer, the document validated once', async (t) => {
  // Each preparation, what it was given and gave back.
  const calls: Array<{ doc: DocumentRef; tags: TagMap; prepared: Prepared }> = [];
  const preparer = preparerAround(async (next, doc, tags) => {
    const prepared = await next();
    calls.push({ doc, tags, prepared });
    return prepared;
  });
  let enforced: CompiledPolicy | null = null;
  const controller = new Controller(new MemoryStore(POLICY), { setPolicy: (c) => { enforced = c; } }, { preparer });
  await controller.start();
  t.equal(calls.length, 1, 'the start prepared its policy with the controller\'s preparer');
  t.equal(enforced, calls[0].prepared.compiled, 'and enforced what it prepared');
  await controller.changeTags('web-1', { add: ['quarantine'], reason: 'test', by: 'test', ttlSeconds: null });
  t.equal(calls.length, 2, 'the tag change was prepared by it too');
  const [start, change] = calls;
  t.equal(change.doc.id, start.doc.id, 'against the same document');
  t.equal(change.prepared.document, start.prepared.document, 'which it did not validate again (the same object back)');
  t.ok(enforced!.groups.get('quarantined')!.members.has('web-1'), 'and the quarantine is in force');
  controller.stop();
});
