import { rmSync } from 'node:fs';
import path from 'node:path';
import { CaracalError } from '../errors/catalog.js';
import { acquirePidLock } from '../util/pid-lock.js';

/**
 * Directories locked by this process. The pid in the lock file cannot tell two spools of one
 * process apart, and two writers appending at their own idea of the end would interleave frames.
 */
const heldHere = new Set<string>();

/**
 * `<dir>/lock` holding the owner's pid, created exclusively; a lock whose pid is gone is stale and
 * taken over (src/util/pid-lock.ts, as for the embedded home), with a spool's own error message.
 */
export class SpoolLock {
  private released = false;
  private constructor(readonly dir: string) {}

  static acquire(dir: string): SpoolLock {
    const resolved = path.resolve(dir);
    if (heldHere.has(resolved)) throw new CaracalError('CARACAL_CONFLICT', `the spool in ${resolved} is already open in this process`);
    acquirePidLock(resolved, (pid) => `the spool in ${resolved} is in use by another process (pid ${pid}); one spool directory belongs to one process`);
    heldHere.add(resolved);
    return new SpoolLock(resolved);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    rmSync(path.join(this.dir, 'lock'), { force: true });
    heldHere.delete(this.dir);
  }
}
