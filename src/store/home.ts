import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { acquirePidLock, processAlive } from '../util/pid-lock.js';

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

export class HomeLock {
  private constructor(readonly home: string) {}

  static acquire(home: string): HomeLock {
    acquirePidLock(home, (pid) => `the embedded database in ${home} is in use by another caracal process (pid ${pid}); stop it first, or point DATABASE_URL at PostgreSQL`);
    return new HomeLock(home);
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
    if (!processAlive(info.pid)) return null;
    return { ...info, adminToken: readFileSync(path.join(home, 'admin.token'), 'utf8').trim() };
  } catch {
    return null;
  }
}

export function newAdminToken(): string {
  return randomBytes(32).toString('base64url');
}
