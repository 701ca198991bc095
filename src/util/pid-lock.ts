import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CaracalError } from '../errors/catalog.js';

/** Whether a process with this pid exists (EPERM: it exists, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes `<dir>/lock` exclusively and writes this process's pid into it. A lock whose pid is gone
 * (or is this process, which no longer holds it) is stale and taken over; a live other holder gets
 * `CARACAL_CONFLICT` with `inUse(pid)` as the message. Returns the lock file's path.
 */
export function acquirePidLock(dir: string, inUse: (pid: number) => string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, 'lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(file, 'wx', 0o600);
      writeFileSync(fd, String(process.pid));
      closeSync(fd);
      return file;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let holder = Number.NaN;
      try {
        holder = Number(readFileSync(file, 'utf8').trim());
      } catch (readErr) {
        if ((readErr as NodeJS.ErrnoException).code !== 'ENOENT') throw readErr;
      }
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && processAlive(holder)) {
        throw new CaracalError('CARACAL_CONFLICT', inUse(holder));
      }
      rmSync(file, { force: true });
    }
  }
  throw new CaracalError('CARACAL_CONFLICT', `could not lock ${dir}`);
}
