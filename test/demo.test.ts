// The README's first command ends in `tapwall demo`: it must build the small
// data center, show the three-tier policy enforced on real connections, keep
// a live table of ports, connections, rules and drops, quarantine web-1
// through the API (its open connections cut, everyone else untouched), lift
// the tag, and clean up everything it created.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const root = fileURLToPath(new URL('..', import.meta.url));

t.test('tapwall demo --duration 30', async (t) => {
  const r = spawnSync(process.execPath, [join(root, 'bin/tapwall.js'), 'demo', '--duration', '30'], { encoding: 'utf8', timeout: 240_000 });
  t.equal(r.status, 0, r.stderr);
  const [before, after] = r.stdout.split('After:');
  t.ok(after, 'both rounds of checks ran');
  const row = (text: string, conn: string) => new RegExp(`${conn.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s+(\\w+)`).exec(text)?.[1];
  t.same(
    ['internet -> web-1:80', 'jump-1 -> web-1:22', 'web-1 -> app-1:8080', 'web-2 -> app-1:8080', 'app-1 -> db-1:5432', 'web-1 -> db-1:5432', 'db-1 -> app-1:8080', 'web-1 -> web-2:8443'].map((c) => row(before, c)),
    ['ALLOWED', 'ALLOWED', 'ALLOWED', 'ALLOWED', 'ALLOWED', 'REJECTED', 'DROPPED', 'DROPPED'],
    'before: allowed, rejected and dropped as the policy says, the internet included',
  );
  t.same(
    ['internet -> web-1:80', 'jump-1 -> web-1:22', 'web-1 -> app-1:8080', 'web-2 -> app-1:8080', 'app-1 -> db-1:5432', 'web-1 -> db-1:5432'].map((c) => row(after, c)),
    ['DROPPED', 'DROPPED', 'DROPPED', 'ALLOWED', 'ALLOWED', 'DROPPED'],
    'after the quarantine tag: web-1 is cut off, everyone else is untouched',
  );
  const cut = /web-1's open connections cut: (\d+)/.exec(r.stdout);
  t.ok(cut && Number(cut[1]) >= 1, `web-1's open connections were cut (${cut?.[1]})`);
  t.match(r.stdout, /port scan of app-1 ended: open 1 closed 0 filtered 1023/, "the port scan from web-2 found only what the policy allows (app's 8080)");
  t.match(r.stdout, /lifts the tag on web-1/, 'the tag is lifted');
  const frames = r.stdout.split('tapwall live').length - 1;
  t.ok(frames >= 4, `the live table was shown (${frames} times)`);
  t.match(r.stdout, /twd-up\s+\(uplink\)/, 'with the uplink among the ports');
  t.match(r.stdout, /application\/internet-to-web\s+allow\s+\d+ connections/, 'and the rules by hits');
  t.match(r.stdout, /tag\.added web-1 quarantine {2}by demo anti-malware/, 'the audit log shows who tagged web-1');
  t.match(r.stdout, /Removed the demo namespaces/);
  const left = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
  t.notMatch(left, /twd-/, 'no namespace left behind');
  t.notMatch(spawnSync('ip', ['-br', 'link'], { encoding: 'utf8' }).stdout, /^tw(d-|-)/m, 'no link left behind');
});
