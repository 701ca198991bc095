import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root (folder of package.json), whether running from src/ (vitest) or dist/. */
function findPackageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'policies'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('caracal: cannot find the package root');
    dir = parent;
  }
}

export const PACKAGE_ROOT = findPackageRoot();
export const MIGRATIONS_DIR = path.join(PACKAGE_ROOT, 'src', 'store', 'migrations');
export const POLICIES_DIR = path.join(PACKAGE_ROOT, 'policies');
export const BUNDLES_DIR = path.join(PACKAGE_ROOT, 'bundles');
export const DEFAULT_BUNDLE = path.join(BUNDLES_DIR, 'default', 'bundle.tar.gz');
