// Builds and runs test/interop/go-verify, the Go program that checks ledger artefacts with transparency-dev/formats
// and golang.org/x/mod/sumdb (see test/interop/README.md). Needs the `go` toolchain and, on a cold module cache, the
// Go module proxy; the binary goes to the given directory, the module and build caches stay in Go's defaults.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const GO_VERIFY_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../interop/go-verify');
/** A cold module cache downloads formats, x/mod, x/crypto, mldsa (about 11 MB) and compiles them. */
export const GO_BUILD_TIMEOUT_MS = 300_000;

export interface GoResult<C = Record<string, number>> {
  ok: boolean;
  error?: string;
  checked?: C;
}

export interface ProcessResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program (bounded by `timeout`); resolves with its exit code, rejects only when it could not run. */
export function runProcess(file: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; timeout: number }): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { ...options, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error && typeof error.code !== 'number') {
        reject(new Error(`${file} ${args.join(' ')} failed to run: ${error.message}\n${stderr}`));
        return;
      }
      resolve({ code: error ? Number(error.code) : 0, stdout, stderr });
    });
  });
}

/** `go build` of go-verify into `binary`, with go.sum as committed (-mod=readonly) and any go.work ignored. */
export async function buildGoVerify(binary: string): Promise<void> {
  // Default GOPATH/GOMODCACHE/GOCACHE (under ~/go and ~/.cache): reused across runs, never inside the repo.
  const env: NodeJS.ProcessEnv = { ...process.env, GOWORK: 'off' };
  delete env.GOMODCACHE;
  delete env.GOPATH;
  const built = await runProcess('go', ['build', '-mod=readonly', '-buildvcs=false', '-trimpath', '-o', binary, '.'], {
    cwd: GO_VERIFY_DIR,
    env,
    timeout: GO_BUILD_TIMEOUT_MS - 10_000,
  }).catch((error: unknown) => {
    throw new Error(`the Go toolchain is needed for this test (go build failed to start): ${String(error)}`);
  });
  if (built.code !== 0) throw new Error(`go build failed (${built.code}):\n${built.stderr}${built.stdout}`);
}

/** Runs the built binary and parses its one JSON line (throws, with stderr, when it is not JSON). */
export async function runGoVerify<C = Record<string, number>>(binary: string, args: string[], timeout = 60_000): Promise<ProcessResult & { result: GoResult<C> }> {
  const ran = await runProcess(binary, args, { timeout });
  let result: GoResult<C>;
  try {
    result = JSON.parse(ran.stdout) as GoResult<C>;
  } catch {
    throw new Error(`go-verify ${args.join(' ')} printed no JSON (exit ${ran.code}):\n${ran.stdout}\n${ran.stderr}`);
  }
  return { ...ran, result };
}
