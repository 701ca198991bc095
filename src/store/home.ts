import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CaracalError } from '../errors/catalog.js';

/**
 * The embedded default keeps PGlite under `<home>`, and PGlite belongs to one process at a time.
 * That process holds `<home>/lock`; while it runs it publishes its admin API address in
 * `<home>/runtime.json` and the admin credential in `<home>/admin.token` (mode 0600), so the CLI
 * in another terminal goes through the running gateway instead of opening the database itself.
 */
export interface RuntimeInfo {
  pid: number;
  adminUrl: string;
  startedAt: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class HomeLock {
  private constructor(readonly home: string) {}

  static acquire(home: string): HomeLock {
    mkdirSync(home, { recursive: true, mode: 0o700 });
    const file = path.join(home, 'lock');
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(file, 'wx', 0o600);
        writeFileSync(fd, String(process.pid));
        closeSync(fd);
        return new HomeLock(home);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const holder = Number(readFileSync(file, 'utf8').trim());
        if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && alive(holder)) {
          throw new CaracalError('CARACAL_CONFLICT', `the embedded database in ${home} is in use by another caracal process (pid ${holder}); stop it first, or point DATABASE_URL at PostgreSQL`);
        }
        rmSync(file, { force: true }); // stale: its process is gone
      }
    }
    throw new CaracalError('CARACAL_CONFLICT', `could not lock ${home}`);
  }

  publishRuntime(adminUrl: string, adminToken: string): void {
    writeFileSync(path.join(this.home, 'admin.token'), adminToken, { mode: 0o600 });
    const info: RuntimeInfo = { pid: process.pid, adminUrl, startedAt: new Date().toISOString() };
    writeFileSync(path.join(this.home, 'runtime.json'), JSON.stringify(info), { mode: 0o600 });
  }

  release(): void {
    for (const name of ['runtime.json', 'admin.token', 'lock']) rmSync(path.join(this.home, name), { force: true });
  }
}

/** The running embedded gateway's admin address and credential, if one is running. */
export function readRuntime(home: string): (RuntimeInfo & { adminToken: string }) | null {
  const file = path.join(home, 'runtime.json');
  if (!existsSync(file)) return null;
  try {
    const info = JSON.parse(readFileSync(file, 'utf8')) as RuntimeInfo;
    if (!alive(info.pid)) return null;
    return { ...info, adminToken: readFileSync(path.join(home, 'admin.token'), 'utf8').trim() };
  } catch {
    return null;
  }
}

export function newAdminToken(): string {
  return randomBytes(32).toString('base64url');
}
