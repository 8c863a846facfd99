// The CLI's API helper (apiCall) against a server in another process: a connection the server closed while
// this process was held up is never used for the next call.
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiCall } from '../src/cli/client.js';

/** Block this thread (its event loop too) until `path` exists, for at most `ms`. */
function blockUntilExists(path: string, ms: number): boolean {
  const cell = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + ms;
  while (!existsSync(path) && Date.now() < deadline) Atomics.wait(cell, 0, 0, 10);
  return existsSync(path);
}

t.test('a call after the server closed the previous connection while this process was held up', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tw-client-'));
  const socket = join(dir, 'api.sock'), closed = join(dir, 'closed');
  // The server closes a connection 2 s after its answer (its keep-alive timeout) and says so in a file.
  const script = `
    const http = require('node:http'), fs = require('node:fs');
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify({ path: req.url })); });
    });
    server.keepAliveTimeout = 2000;
    server.on('connection', (s) => s.on('close', () => fs.writeFileSync(${JSON.stringify(closed)}, '')));
    server.listen(${JSON.stringify(socket)}, () => process.stdout.write('listening\\n'));`;
  const server = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => { server.kill(); rmSync(dir, { recursive: true, force: true }); });
  await new Promise<void>((resolve, reject) => {
    server.stdout.on('data', (c: Buffer) => { if (c.toString().includes('listening')) resolve(); });
    server.once('exit', (code) => reject(new Error(`the server exited (${code})`)));
  });
  const first = await apiCall<{ path: string }>({ socket }, 'POST', '/first', { a: 1 });
  t.same(first.body, { path: '/first' }, 'the first call is answered');
  // Held up (as by a synchronous CLI command) until the server has closed the connection it answered on: this
  // process has not seen the close when it makes its next call.
  t.ok(blockUntilExists(closed, 10_000), 'the server closed the first connection');
  const second = await apiCall<{ path: string }>({ socket }, 'POST', '/second', { a: 2 });
  t.same(second.body, { path: '/second' }, 'the next call is answered on a connection of its own');
});
