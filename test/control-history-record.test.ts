// Recording a policy version without holding the forwarding thread
// (src/control/history.ts): the text is hashed and written a slice per turn
// of the event loop. What is kept must be the text as applied, byte for byte,
// whatever the slices cut through, and versions keep the order they were
// asked in.
import t from 'tap';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HISTORY_SLICE, PolicyHistory } from '../src/control/history.js';
import { until } from './fixtures.js';

const sha = (text: string) => createHash('sha256').update(text).digest('hex');

t.test('a version is kept byte for byte, also where a slice would cut a character in two', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-hist-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const history = new PolicyHistory(dir);
  // A surrogate pair across the first slice's end, multi-byte characters around, and three slices in all.
  const text = `${'a'.repeat(HISTORY_SLICE - 1)}😀é${'b'.repeat(HISTORY_SLICE)}ü${'c'.repeat(1000)}`;
  const order: string[] = [];
  let ticking = true;
  const tick = () => { if (!ticking) return; order.push('t'); setImmediate(tick); };
  setImmediate(tick);
  const entry = await history.record(text, { by: 'alice', revision: 1, rules: 3 });
  ticking = false;
  t.ok(entry, 'recorded');
  t.equal(entry!.sha256, sha(text), 'the hash of the whole text');
  t.equal(entry!.bytes, Buffer.byteLength(text), 'its length in bytes');
  t.equal(history.get(entry!.id)!.text, text, 'the text kept as it was applied');
  t.ok(order.length >= 3, `the event loop turned while it was written (${order.length} turns)`);
  t.same(readdirSync(join(dir, 'history')).filter((f) => f.endsWith('.tmp')), [], 'no temporary file left');
});

t.test('versions asked for one after the other keep their order; the same text again is not a new version', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-hist-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const history = new PolicyHistory(dir);
  const big = 'x'.repeat(3 * HISTORY_SLICE);
  // Asked for in one turn, without waiting: a long one first, then two short ones, then the long one's text again.
  const asked = [history.record(big, { by: 'a', revision: 1, rules: 1 }), history.record('v2', { by: 'b', revision: 2, rules: 1 }), history.record('v3', { by: 'c', revision: 3, rules: 1 }), history.record('v3', { by: 'd', revision: 4, rules: 1 })];
  const entries = await Promise.all(asked);
  t.same(entries.map((e) => e!.id), [1, 2, 3, 3], 'ids in the order asked; the repeated text is the newest version again');
  await history.settled();
  t.same(history.list().map((e) => [e.id, e.by]), [[3, 'c'], [2, 'b'], [1, 'a']], 'the list, newest first');
  t.same(new PolicyHistory(dir).list().map((e) => e.sha256), [sha('v3'), sha('v2'), sha(big)], 'and so is the index on disk');
});

t.test('beyond the limit the oldest version goes, its text file too', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-hist-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const history = new PolicyHistory(dir, 2);
  for (const [i, text] of ['one', 'two', 'three'].entries()) await history.record(text, { by: 'a', revision: i + 1, rules: 1 });
  t.same(history.list().map((e) => e.id), [3, 2], 'the newest two are listed');
  t.equal(history.get(1), null, 'the oldest is gone');
  // Its text is removed on the thread pool (freeing a large file is not the forwarding thread's work).
  const texts = () => readdirSync(join(dir, 'history')).filter((f) => f !== 'index.jsonl').sort();
  await until('the oldest text removed', () => texts().length === 2, 5000);
  t.equal(texts().length, 2, `two texts are kept (${texts().join(', ')})`);
});
