import { mkdtempSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CaracalConfig } from '../../src/config/schema.js';
import { AppContext } from '../../src/context.js';
import { assembleGateway, type AssembledGateway } from '../../src/gateway/server.js';
import { createLogger } from '../../src/logging/logger.js';
import { waitUntil } from '../helpers/fixtures.js';
import { createHarness, readDecisions, type Harness } from '../helpers/gateway-harness.js';
import { requireServices } from '../helpers/services.js';

/**
 * A TCP gate in front of the Kafka broker: closed, it accepts and drops every connection (the
 * broker looks down); open, it forwards. Only the bootstrap goes through it — the broker advertises
 * its own address — which is all a client needs to find the cluster "down" at start.
 */
async function startKafkaGate(target: string): Promise<{ address: string; open(): void; close(): Promise<void> }> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  let open = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    if (!open) {
      client.destroy();
      return;
    }
    const upstream = net.connect(port, host);
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    client.pipe(upstream).pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    open: () => {
      open = true;
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * With the spool (the default) a gateway started while Kafka is unreachable serves from its spool
 * and attaches to the log when it is back; without the spool it refuses to start (each allow would
 * need the log). The harness's own context (real Kafka) plays the operator: it registers the agent
 * and reads what was shipped.
 */
describe('a gateway started while Kafka is down (PostgreSQL + Kafka + Redis)', () => {
  let h: Harness;
  let token: string;
  let agent: string;
  const opened: { ctx: AppContext; assembled?: AssembledGateway }[] = [];

  beforeAll(async () => {
    h = await createHarness({ backend: 'services' });
    agent = await h.registerAgent();
    await h.grant(agent, ['api:external/echo'], ['read']);
    token = await h.token(agent);
  });

  afterAll(async () => {
    for (const { ctx, assembled } of opened.reverse()) {
      await assembled?.stop().catch(() => {});
      await ctx.close().catch(() => {});
    }
    await h?.close();
  });

  /** A second gateway on the harness's database and cache, reaching Kafka only through `brokers`. */
  async function gatewayVia(brokers: string, spool: boolean): Promise<{ ctx: AppContext; assemble: () => Promise<AssembledGateway> }> {
    // The harness's home (its signing key, so the harness's tokens verify), a spool of its own.
    const base = h.ctx.config;
    const config: CaracalConfig = {
      ...base,
      logLevel: 'silent',
      kafka: { ...base.kafka, brokers: [brokers] },
      spool: { ...base.spool, enabled: spool, dir: path.join(mkdtempSync(path.join(tmpdir(), 'caracal-events-down-')), 'spool') },
    };
    const ctx = await AppContext.fromConfig(config, { db: h.ctx.db, cache: await h.ctx.cache(), logger: createLogger('silent') });
    const entry: (typeof opened)[number] = { ctx };
    opened.push(entry);
    return {
      ctx,
      assemble: async () => {
        entry.assembled = await assembleGateway(ctx, { prepare: false });
        return entry.assembled;
      },
    };
  }

  it('starts with the spool, answers allows, reports the log as advisory, and ships and follows lifecycle once Kafka is back', async () => {
    const gate = await startKafkaGate(requireServices().kafkaBrokers[0]!);
    try {
      const { assemble } = await gatewayVia(gate.address, true);
      const assembled = await assemble();
      const app = assembled.gateway.app;

      const ready = await app.inject({ url: '/ready' });
      expect(ready.statusCode, ready.body).toBe(200);
      expect(ready.json().checks.events).toMatchObject({ ok: false, advisory: true });

      const allowed = await app.inject({ url: '/proxy/echo/while-down', headers: { authorization: `Bearer ${token}` } });
      expect(allowed.statusCode, allowed.body).toBe(200);
      const decisionId = allowed.headers['x-caracal-decision-id'] as string;

      gate.open();
      // Shipped from the spool once the gateway attached to the log.
      const shipped = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (d) => d.some((x) => x.decision_id === decisionId), 60_000);
      expect(shipped.filter((x) => x.decision_id === decisionId)).toHaveLength(1);
      await waitUntil(async () => (await app.inject({ url: '/ready' })).json().checks.events.ok === true, 'events check ok', 30_000);

      // The lifecycle subscription is attached too: a suspension reaches this gateway's facts
      // (facts are cached; only agent.lifecycle invalidates them).
      await h.op('agent.suspend', { id: agent });
      await waitUntil(
        async () => (await app.inject({ url: '/proxy/echo/after-suspend', headers: { authorization: `Bearer ${token}` } })).statusCode === 403,
        'suspension seen by the gateway that started while Kafka was down',
        30_000,
      );
      await h.op('agent.resume', { id: agent });
    } finally {
      await gate.close();
    }
  }, 180_000);

  it('without the spool refuses to start while Kafka is unreachable', async () => {
    const gate = await startKafkaGate(requireServices().kafkaBrokers[0]!);
    try {
      const { assemble } = await gatewayVia(gate.address, false);
      await expect(assemble()).rejects.toMatchObject({ code: 'CARACAL_DEPENDENCY' });
    } finally {
      await gate.close();
    }
  }, 120_000);
});
