/**
 * Problems found in a policy document, with where they are.
 *
 * Every problem names the file, the line and column, the path inside the
 * document (`sections[1].rules[3].to`), what was found and what was expected.
 * Validation collects all of them before it gives up, so a user fixes a
 * policy in one pass; PolicyError carries the whole list and a stable code.
 */

export type PathSegment = string | number;
export type Severity = 'error' | 'warning';

export interface PolicyProblem {
  severity: Severity;
  /** Stable, machine-readable kind of problem, e.g. `unknown-key`. */
  code: string;
  file: string;
  line: number;
  column: number;
  path: string;
  message: string;
}

export function formatPath(path: readonly PathSegment[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out === '' ? '(document)' : out;
}

export function formatProblem(p: PolicyProblem): string {
  return `${p.file}:${p.line}:${p.column}: ${p.severity}: ${p.path}: ${p.message} [${p.code}]`;
}

export class PolicyError extends Error {
  readonly code = 'POLICY_INVALID';
  override readonly name = 'PolicyError';
  constructor(readonly problems: PolicyProblem[]) {
    super(
      `policy is invalid (${problems.filter((p) => p.severity === 'error').length} errors):\n` +
        problems.map(formatProblem).join('\n'),
    );
  }
}
