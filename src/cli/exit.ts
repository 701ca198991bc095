/**
 * Thrown by a command that has already printed its result and must exit with a specific non-zero
 * code (e.g. `policy test`: 3 failing Rego tests, 4 coverage, 5 fixtures). `main` returns the code
 * and prints nothing more.
 */
export class CliExit extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
    this.name = 'CliExit';
  }
}
