import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CaracalError } from '../errors/catalog.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Directories locked by this process. The pid in the lock file cannot tell two spools of one
 * process apart, and two writers appending at their own idea of the end would interleave frames.
 */
const heldHere = new Set<string>();

/**
 * `<dir>/lock` holding the owner's pid, created exclusively; a lock whose pid is gone is stale and
 * taken over. This is `HomeLock`'s scheme (src/store/home.ts) with a spool's own error message, and
 * without the runtime files `HomeLock.release` removes.
 */
export class SpoolLock {
  private released = false;
  private constructor(readonly dir: string) {}

  static acquire(dir: string): SpoolLock {
    const resolved = path.resolve(dir);
    if (heldHere.has(resolved)) throw new CaracalError('CARACAL_CONFLICT', `the spool in ${resolved} is already open in this process`);
    mkdirSync(resolved, { recursive: true, mode: 0o700 });
    const file = path.join(resolved, 'lock');
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(file, 'wx', 0o600);
        writeFileSync(fd, String(process.pid));
        closeSync(fd);
        heldHere.add(resolved);
        return new SpoolLock(resolved);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        let holder = Number.NaN;
        try {
          holder = Number(readFileSync(file, 'utf8').trim());
        } catch (readErr) {
          if ((readErr as NodeJS.ErrnoException).code !== 'ENOENT') throw readErr;
        }
        if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && alive(holder)) {
          throw new CaracalError('CARACAL_CONFLICT', `the spool in ${resolved} is in use by another process (pid ${holder}); one spool directory belongs to one process`);
        }
        rmSync(file, { force: true }); // stale: its process is gone (or it was this process, which no longer holds it)
      }
    }
    throw new CaracalError('CARACAL_CONFLICT', `could not lock the spool in ${resolved}`);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    rmSync(path.join(this.dir, 'lock'), { force: true });
    heldHere.delete(this.dir);
  }
}
