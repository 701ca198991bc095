import { expect } from 'vitest';
import { main } from '../../src/cli/main.js';
import { createOutput } from '../../src/cli/output.js';

export interface CliRun {
  code: number;
  out: string;
  err: string;
}

/** Runs `caracal …` in-process through `main()` with the given environment, capturing its output. */
export function cliRunner(env: () => Record<string, string>): (...args: string[]) => Promise<CliRun> {
  return async (...args) => {
    let out = '';
    let err = '';
    const code = await main(['node', 'caracal', ...args], { out: createOutput((t) => (out += t)), err: (t) => (err += t), env: env() });
    return { code, out, err };
  };
}

/** A failure is exactly one `caracal: …` line on stderr, nothing on stdout, and a non-zero exit. */
export function expectOneLineError(run: CliRun, pattern: RegExp): void {
  expect(run.code).not.toBe(0);
  expect(run.out).toBe('');
  expect(run.err.trimEnd().split('\n')).toHaveLength(1);
  expect(run.err).toMatch(/^caracal: /);
  expect(run.err).toMatch(pattern);
}
