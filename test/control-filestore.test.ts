// The config file store (src/control/store.ts): what it writes itself is
// not read back when the watch sees it, yet every other change to the file is
// still seen, including one of the same size, and a refresh (SIGHUP) always
// reads the file.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileStore, type StoreState } from '../src/control/store.js';

t.test('its own writes, an edit of the same size, and a refresh', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-fs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'policy.yaml');
  writeFileSync(path, 'default: drop\nsections: []\n');
  const store = new FileStore(path, join(dir, 'tags.json'));
  t.teardown(() => store.close());
  const seen: StoreState[] = [];
  let waiting: ((s: StoreState) => void) | null = null;
  store.watch((key, state) => { if (key !== 'policy') return; seen.push(state); waiting?.(state); });
  const next = () => new Promise<StoreState>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no change seen in 10 s')), 10_000);
    waiting = (s) => { clearTimeout(timer); waiting = null; resolve(s); };
  });

  // Written by the store: one change, the text on disk byte for byte (a multi-byte character on a slice's edge too).
  const big = `default: drop\n# ${'x'.repeat(300_000)}é😀\nsections: []\n`;
  const cas = await store.putPolicy(big, null);
  t.ok(cas.ok, 'written');
  t.equal(readFileSync(path, 'utf8'), big, 'the file holds the text');
  t.equal(seen.length, 1, 'one change');
  const revision = seen[0].policy.revision;

  // An edit by someone else, the same number of bytes: seen, and read.
  const edited = big.replace('x', 'y');
  const change = next();
  writeFileSync(path, edited);
  const s = await change;
  t.equal(s.policy.text, edited, 'the edit is seen, though of the same size');
  t.ok(s.policy.revision > revision, 'as a new revision');

  // Put back as it was written, its time too: the watch takes it for the store's own file, a refresh does not.
  await store.putPolicy(big, null);
  const mine = statSync(path);
  writeFileSync(path, edited);
  utimesSync(path, mine.atime, mine.mtime);
  const count = seen.length;
  const refreshed = next();
  await store.refresh();
  t.equal((await refreshed).policy.text, edited, 'a refresh reads the file whatever its stat says');
  t.equal(seen.length, count + 1, 'one change for it');
});

t.test('a refresh while the store writes the file: the written text stays, as one change', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-fs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'policy.yaml');
  const before = `default: drop\n# ${'a'.repeat(2_000_000)}\nsections: []\n`;
  writeFileSync(path, before);
  const store = new FileStore(path, join(dir, 'tags.json'));
  t.teardown(() => store.close());
  const seen: string[] = [];
  store.watch((key, state) => { if (key === 'policy') seen.push(state.policy.text); });
  // A SIGHUP (or the watch) reading the file while a PUT writes it (a slice per turn, then the rename on the
  // thread pool): it must not take the old text, or the new one, for an edit by someone else.
  const after = before.replace(/a+/, (m) => 'b'.repeat(m.length));
  const put = store.putPolicy(after, null);
  const refreshed = store.refresh();
  t.ok((await put).ok, 'written');
  await refreshed;
  // Whatever a deferred look finds comes within its 50 ms: wait for the file's own watch to settle too.
  await new Promise((r) => setTimeout(r, 300));
  t.same(seen.map((x) => x === after ? 'new' : x === before ? 'old' : 'other'), ['new'], 'one change, to the written text');
  t.equal((await store.read()).policy.text, after, 'the store holds the written text');
});
