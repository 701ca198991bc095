import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { AppContext } from '../../src/context.js';
import { createLogger } from '../../src/logging/logger.js';

describe('AppContext', () => {
  it('does not keep a failed event-log open: the next call tries again', async () => {
    // A broker address nothing listens on (port 1 on loopback): the open fails as a dependency error.
    const home = mkdtempSync(path.join(tmpdir(), 'caracal-ctx-'));
    const config = loadConfig({ env: { CARACAL_HOME: home }, overrides: { logLevel: 'silent', kafka: { brokers: ['127.0.0.1:1'] } } });
    const ctx = await AppContext.fromConfig(config, { logger: createLogger('silent') });
    try {
      const first = ctx.events();
      await expect(first).rejects.toMatchObject({ code: 'CARACAL_DEPENDENCY' });
      const second = ctx.events();
      expect(second).not.toBe(first);
      await expect(second).rejects.toMatchObject({ code: 'CARACAL_DEPENDENCY' });
    } finally {
      await ctx.close();
    }
  }, 120_000);
});
