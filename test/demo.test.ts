// The README's first command ends in `tapwall demo`: it must show the three-tier
// policy enforced on real connections, then the quarantine, and clean up.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const root = fileURLToPath(new URL('..', import.meta.url));

t.test('tapwall demo', async (t) => {
  const r = spawnSync(process.execPath, [join(root, 'bin/tapwall.js'), 'demo'], { encoding: 'utf8', timeout: 180_000 });
  t.equal(r.status, 0, r.stderr);
  const [before, after] = r.stdout.split('After:');
  t.ok(after, 'both rounds ran');
  const row = (text: string, conn: string) => new RegExp(`${conn.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s+(\\w+)`).exec(text)?.[1];
  t.same(
    ['jump-1 -> web-1:22', 'web-1 -> app-1:8080', 'web-2 -> app-1:8080', 'app-1 -> db-1:5432', 'web-1 -> db-1:5432', 'db-1 -> app-1:8080', 'web-1 -> web-2:8443'].map((c) => row(before, c)),
    ['ALLOWED', 'ALLOWED', 'ALLOWED', 'ALLOWED', 'REJECTED', 'DROPPED', 'DROPPED'],
    'before: allowed, rejected and dropped as the policy says',
  );
  t.same(
    ['jump-1 -> web-1:22', 'web-1 -> app-1:8080', 'web-2 -> app-1:8080', 'app-1 -> db-1:5432', 'web-1 -> db-1:5432'].map((c) => row(after, c)),
    ['DROPPED', 'DROPPED', 'ALLOWED', 'ALLOWED', 'DROPPED'],
    'after the quarantine tag: web-1 is cut off, everyone else is untouched',
  );
  t.match(r.stdout, /Removed the demo namespaces/);
  const left = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
  t.notMatch(left, /twd-/, 'no namespace left behind');
});
