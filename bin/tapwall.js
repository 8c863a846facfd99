#!/usr/bin/env node
// The tapwall command: runs the compiled CLI (npm ci builds it; `npm run build` rebuilds).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write('tapwall: not built yet: run `npm ci` (or `npm run build`) in the project folder\n');
  process.exit(1);
}
await import(main.href);
