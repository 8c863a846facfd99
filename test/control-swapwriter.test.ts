// The tags file's writer (src/control/store.ts SwapWriter): the text is
// written into an empty swap file beside the target and the two trade places
// (the addon's renameExchange), so every reader sees a whole file; the old
// text is cut from the swap file after the write; mode and owner follow the
// target; and the deferred cut of one write never empties a later one's
// text, also from another writer of the same file.
import t from 'tap';
import { chmodSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SwapWriter } from '../src/control/store.js';
import { native } from '../src/io/native.js';
import { until } from './fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'tw-swap-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('the addon exchanges two paths, and says when one is missing', async (t) => {
  const a = join(dir, 'a'), b = join(dir, 'b');
  writeFileSync(a, 'A');
  writeFileSync(b, 'B');
  t.equal(native().renameExchange(a, b), 0, 'exchanged');
  t.equal(readFileSync(a, 'utf8'), 'B', 'a holds what b held');
  t.equal(readFileSync(b, 'utf8'), 'A', 'and b what a held');
  t.equal(native().renameExchange(a, join(dir, 'none')), -2, 'a missing path: -ENOENT');
  t.throws(() => native().renameExchange(a, 5 as unknown as string), /two paths/, 'a path that is not a string is refused');
});

t.test('writes replace the file whole through the swap file, which is left empty', async (t) => {
  const target = join(dir, 'tags.json');
  const w = new SwapWriter(target);
  t.equal(w.swapPath, join(dir, '.tags.json.swap'), 'the swap file sits beside the target, hidden');

  await w.write('{"first":1}\n');
  t.equal(readFileSync(target, 'utf8'), '{"first":1}\n', 'a target that does not exist yet is made');
  chmodSync(target, 0o644);
  const firstInode = statSync(target).ino;

  await w.write('{"second":2}\n');
  t.equal(readFileSync(target, 'utf8'), '{"second":2}\n', 'the second text is in the target');
  t.equal(statSync(w.swapPath).ino, firstInode, 'the old file went to the swap path: exchanged, not renamed over');
  t.equal(statSync(target).mode & 0o777, 0o644, "the target keeps the mode it had (0644, not the writer's 0600)");
  await until('the old text cut from the swap file', () => statSync(w.swapPath).size === 0);

  const swapInode = statSync(w.swapPath).ino;
  await w.write('{"third":3}\n');
  t.equal(readFileSync(target, 'utf8'), '{"third":3}\n', 'the third text is in the target');
  t.equal(statSync(target).ino, swapInode, 'written into the emptied swap file and exchanged');
  t.equal(statSync(target).mode & 0o777, 0o644, 'the swap file took the mode the target had');
});

t.test('a swap file left with text (a stop before the cut) is cut before it is written', async (t) => {
  const target = join(dir, 'left.json');
  writeFileSync(target, '{"old":true}\n');
  const w = new SwapWriter(target);
  writeFileSync(w.swapPath, `${'x'.repeat(10_000)}\n`, { mode: 0o600 });
  await w.write('{"new":true}\n');
  t.equal(readFileSync(target, 'utf8'), '{"new":true}\n', 'the target holds exactly the new text, nothing of the old swap file');
});

t.test("one writer's deferred cut never empties another's text", async (t) => {
  const target = join(dir, 'shared.json');
  writeFileSync(target, '{}\n');
  const a = new SwapWriter(target), b = new SwapWriter(target);
  await a.write('{"a":1}\n');
  await b.write('{"b":2}\n'); // before a's cut, which must not reach the file now holding b's text
  await a.write('{"a":3}\n');
  await b.write('{"b":4}\n');
  await until('both cuts done', () => statSync(a.swapPath).size === 0, 5000);
  // The cuts ran after all four writes: the target must still hold the last one, whole.
  await new Promise((r) => setTimeout(r, 100));
  t.equal(readFileSync(target, 'utf8'), '{"b":4}\n', 'the target holds the last text');
});

t.test('a swap path that is not a file of its own is replaced, never written through', async (t) => {
  const target = join(dir, 'linked.json');
  writeFileSync(target, '{}\n');
  const w = new SwapWriter(target);
  // Another name for a file elsewhere: writing into it would change that file.
  const elsewhere = join(dir, 'elsewhere.txt');
  writeFileSync(elsewhere, 'keep me\n');
  linkSync(elsewhere, w.swapPath);
  await w.write('{"linked":false}\n');
  t.equal(readFileSync(elsewhere, 'utf8'), 'keep me\n', 'the other name still holds its text');
  t.equal(readFileSync(target, 'utf8'), '{"linked":false}\n', 'and the target the new one');
  // A FIFO: opening it to write would wait for a reader, forever.
  await until('the swap file cut', () => statSync(w.swapPath).size === 0);
  rmSync(w.swapPath);
  execFileSync('mkfifo', [w.swapPath]);
  await w.write('{"fifo":false}\n');
  t.equal(readFileSync(target, 'utf8'), '{"fifo":false}\n', 'a FIFO at the swap path: written without waiting');
  t.ok(statSync(target).isFile(), 'and the target is a file');
});

t.test('a write that fails leaves the target as it was', async (t) => {
  const sub = join(dir, 'sub');
  const target = join(sub, 'tags.json');
  await t.rejects(new SwapWriter(target).write('{}\n'), /ENOENT/, 'a folder that does not exist: the error is thrown');
  const plain = join(dir, 'plain.json');
  writeFileSync(plain, '{"kept":true}\n');
  const w = new SwapWriter(plain);
  // A directory where the swap file should be: it cannot be opened for writing.
  mkdirSync(w.swapPath);
  await t.rejects(w.write('{"lost":true}\n'), /EISDIR/, 'the write is refused');
  t.equal(readFileSync(plain, 'utf8'), '{"kept":true}\n', 'the target is untouched');
  t.notOk(existsSync(join(dir, 'plain.json.tmp')), 'no temporary file beside it');
});
