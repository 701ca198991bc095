import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { issueAccessToken } from '../../src/authority/tokens.js';
import type { Cache } from '../../src/cache/cache.js';
import { loadConfig } from '../../src/config/load.js';
import { AppContext } from '../../src/context.js';
import { startEchoUpstream, type EchoUpstream } from '../../src/dev/echo-upstream.js';
import { parseEvent, type DecisionData } from '../../src/events/cloudevents.js';
import type { EventLog, LogMessage } from '../../src/events/event-log.js';
import { assembleGateway, type AssembledGateway } from '../../src/gateway/server.js';
import { createLogger } from '../../src/logging/logger.js';
import { runOperation } from '../../src/operations/index.js';
import type { Db } from '../../src/store/db.js';
import { randomName } from './services.js';

export interface HarnessOptions {
  env?: Record<string, string>;
  db?: Db;
  events?: EventLog;
  cache?: Cache;
  extraUpstreams?: { name: string; url: string; timeoutMs?: number }[];
  /** Config values merged over the harness defaults (e.g. `auth.externalIssuers`, `gateway.tls`). */
  configOverrides?: { auth?: Record<string, unknown>; gateway?: Record<string, unknown> } & Record<string, unknown>;
}

/** A whole gateway (real WASM, real event log, real echo upstream on loopback) driven by inject(). */
export interface Harness {
  ctx: AppContext;
  assembled: AssembledGateway;
  upstream: EchoUpstream;
  registerAgent(name?: string): Promise<string>;
  /** Policy + an allowlist entry for the echo upstream (agents with no entry are denied by default). */
  grant(principalId: string, resources: string[], actions: string[]): Promise<string>;
  /** An allowlist entry covering every URL of the echo upstream. */
  allowUpstream(principalId: string): Promise<void>;
  token(principalId: string, ttlSeconds?: number, now?: Date): Promise<string>;
  op(name: string, args: Record<string, unknown>): Promise<unknown>;
  close(): Promise<void>;
}

export async function createHarness(options: HarnessOptions = {}): Promise<Harness> {
  const upstream = await startEchoUpstream();
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-harness-'));
  const config = loadConfig({
    env: { CARACAL_TOPIC_PREFIX: `${randomName('t')}.`, ...options.env },
    cwd: home,
    overrides: {
      ...options.configOverrides,
      home,
      logLevel: 'silent',
      gateway: { ...options.configOverrides?.gateway, upstreams: [{ name: 'echo', url: upstream.url }, ...(options.extraUpstreams ?? [])] },
    },
  });
  const ctx = await AppContext.fromConfig(config, {
    logger: createLogger('silent'),
    ...(options.db ? { db: options.db } : {}),
    ...(options.events ? { events: options.events } : {}),
    ...(options.cache ? { cache: options.cache } : {}),
  });
  const assembled = await assembleGateway(ctx);
  await assembled.gateway.app.ready();
  const op = (name: string, args: Record<string, unknown>) => runOperation(ctx, name, args);
  const allowUpstream = async (principalId: string) => {
    await op('allowlist.create', { principalId, pattern: `${upstream.url}/**`, patternType: 'glob' });
  };
  return {
    ctx,
    assembled,
    upstream,
    op,
    registerAgent: async (name = randomName('agent')) => ((await op('agent.register', { name, owner: 'test@example.com' })) as { id: string }).id,
    grant: async (principalId, resources, actions) => {
      await allowUpstream(principalId);
      return ((await op('policy.create', { principalId, resources, actions, maxValiditySeconds: 3600 })) as { id: string }).id;
    },
    allowUpstream,
    token: async (principalId, ttlSeconds = 300, now) => (await issueAccessToken(await ctx.signingKey(), ctx.tokenSettings, principalId, ttlSeconds, now)).token,
    close: async () => {
      await assembled.gateway.app.close();
      await assembled.stop();
      await ctx.close();
      await upstream.close();
    },
  };
}

/** Reads a topic from the beginning with a fresh group until `done` says so or the time is up. */
export async function readTopic(
  events: EventLog,
  topic: string,
  done: (messages: LogMessage[]) => boolean,
  timeoutMs = 15_000,
): Promise<LogMessage[]> {
  const messages: LogMessage[] = [];
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const subscription = await events.subscribe({
    groupId: randomName('reader'),
    topics: [topic],
    fromBeginning: true,
    handler: async (message) => {
      messages.push(message);
      if (done(messages)) finish();
    },
  });
  const timer = setTimeout(finish, timeoutMs);
  await finished;
  clearTimeout(timer);
  await subscription.stop();
  return messages;
}

export async function readDecisions(events: EventLog, topic: string, expected: (d: DecisionData[]) => boolean, timeoutMs?: number): Promise<DecisionData[]> {
  const toData = (messages: LogMessage[]) => messages.map((m) => parseEvent(m.value).data as DecisionData);
  return toData(await readTopic(events, topic, (messages) => expected(toData(messages)), timeoutMs));
}
