import { appendFileSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { EventLog } from '../../src/events/event-log.js';
import { BACKENDS, createHarness, readDecisions, type Harness } from '../helpers/gateway-harness.js';

/** The event log with publishing to one topic switched off and on (a broker that is down for it). */
function switchable(topicSuffix: string) {
  const state = { down: false };
  const wrap = (events: EventLog): EventLog => {
    const wrapped = Object.create(events) as EventLog;
    wrapped.publish = async (topic, messages) => {
      if (state.down && topic.endsWith(topicSuffix)) throw new Error('event log unavailable (test)');
      return events.publish(topic, messages);
    };
    return wrapped;
  };
  return { state, wrap };
}

async function allowedAgent(h: Harness): Promise<string> {
  const agent = await h.registerAgent();
  await h.grant(agent, ['api:external/echo'], ['read']);
  return h.token(agent);
}

describe.each(BACKENDS)('gateway with the local spool on the %s backend', (backend) => {
  it('records decisions in the spool, ships them to the event log, and reports it', async () => {
    const h = await createHarness({ backend, configOverrides: { spool: { enabled: true } } });
    try {
      const token = await allowedAgent(h);
      const replies = await Promise.all(Array.from({ length: 20 }, () => h.assembled.gateway.app.inject({ url: '/proxy/echo/x', headers: { authorization: `Bearer ${token}` } })));
      expect(replies.map((r) => r.statusCode)).toEqual(Array(20).fill(200));
      const ids = new Set(replies.map((r) => r.headers['x-caracal-decision-id'] as string));
      const shipped = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (d) => [...ids].every((id) => d.some((x) => x.decision_id === id)));
      for (const id of ids) expect(shipped.filter((d) => d.decision_id === id)).toHaveLength(1);
      // The log has the events before the shipper has counted its acknowledgement: the count follows shortly.
      const shippedCount = (text: string) => Number(/caracal_spool_shipped_events (\d+)/.exec(text)?.[1] ?? 0);
      let metrics = await h.assembled.metrics.registry.metrics();
      for (const deadline = Date.now() + 10_000; shippedCount(metrics) < 20 && Date.now() < deadline; ) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        metrics = await h.assembled.metrics.registry.metrics();
      }
      expect(metrics).toMatch(/caracal_spool_appended_events \d+/);
      expect(shippedCount(metrics)).toBeGreaterThanOrEqual(20);
      // Every durable append went through an observed flush: the histograms count flushes and records.
      const flushes = Number(/caracal_spool_flushes (\d+)/.exec(metrics)?.[1]);
      expect(flushes).toBeGreaterThan(0);
      expect(Number(/caracal_spool_flush_duration_seconds_count (\d+)/.exec(metrics)?.[1])).toBe(flushes);
      expect(Number(/caracal_spool_flush_records_sum (\d+)/.exec(metrics)?.[1])).toBe(Number(/caracal_spool_appended_events (\d+)/.exec(metrics)?.[1]));
      expect((await h.assembled.gateway.app.inject({ url: '/ready' })).json().checks.spool).toMatchObject({ ok: true });
    } finally {
      await h.close();
    }
  });

  it('full spool: allows get 503 and never reach the upstream, denials are still answered, /ready fails', async () => {
    const log = switchable('policy.decisions');
    const h = await createHarness({ backend, wrapEvents: log.wrap, configOverrides: { spool: { enabled: true, maxBytes: 64 * 1024 } } });
    try {
      const token = await allowedAgent(h);
      log.state.down = true;
      let status = 200;
      let sent = 0;
      const before = h.upstream.requests;
      let allowed = 0;
      // Each decision is about 1 KiB: the 64 KiB spool fills within a bounded number of calls.
      while (status === 200 && sent < 400) {
        const reply = await h.assembled.gateway.app.inject({ url: '/proxy/echo/fill', headers: { authorization: `Bearer ${token}` } });
        status = reply.statusCode;
        sent++;
        if (status === 200) allowed++;
        else expect(reply.json()).toMatchObject({ error: 'CARACAL_EVENTS_UNAVAILABLE', request_id: expect.any(String) });
      }
      expect(status).toBe(503);
      expect(allowed).toBeGreaterThan(10);
      expect(h.upstream.requests - before).toBe(allowed);
      const denied = await h.assembled.gateway.app.inject({ method: 'POST', url: '/proxy/echo/fill', headers: { authorization: `Bearer ${token}` } });
      expect(denied.statusCode).toBe(403);
      const ready = await h.assembled.gateway.app.inject({ url: '/ready' });
      expect(ready.statusCode).toBe(503);
      expect(ready.json().checks.spool.ok).toBe(false);
      // The log comes back: the spool drains and allows pass again.
      log.state.down = false;
      let recovered = 0;
      for (let i = 0; i < 100 && recovered !== 200; i++) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        recovered = (await h.assembled.gateway.app.inject({ url: '/proxy/echo/after', headers: { authorization: `Bearer ${token}` } })).statusCode;
      }
      expect(recovered).toBe(200);
    } finally {
      log.state.down = false;
      await h.close();
    }
  });
});

describe('gateway spool across a restart (embedded)', () => {
  it('ships what the previous run left, cuts a torn tail and counts it', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'caracal-spool-restart-'));
    const log = switchable('policy.decisions');
    // Both runs are one deployment: same topics (the spool records name them), same spool directory.
    const env = { CARACAL_TOPIC_PREFIX: `${path.basename(dir).replace(/[^A-Za-z0-9]/g, '')}.` };
    const first = await createHarness({ env, wrapEvents: log.wrap, configOverrides: { spool: { enabled: true, dir } } });
    const ids: string[] = [];
    try {
      const token = await allowedAgent(first);
      log.state.down = true;
      for (let i = 0; i < 15; i++) {
        const reply = await first.assembled.gateway.app.inject({ url: '/proxy/echo/before-restart', headers: { authorization: `Bearer ${token}` } });
        expect(reply.statusCode).toBe(200);
        ids.push(reply.headers['x-caracal-decision-id'] as string);
      }
    } finally {
      await first.close(); // the log is still down: the decisions stay in the spool
    }
    // A crash mid-write leaves half a record at the end of the last segment.
    const segment = readdirSync(dir).filter((f) => f.endsWith('.seg')).sort().at(-1)!;
    appendFileSync(path.join(dir, segment), Buffer.from([0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef, 0x5b, 0x31]));

    const second = await createHarness({ env, configOverrides: { spool: { enabled: true, dir } } });
    try {
      const shipped = await readDecisions(await second.ctx.events(), second.ctx.topics.decisions, (d) => ids.every((id) => d.some((x) => x.decision_id === id)), 30_000);
      for (const id of ids) expect(shipped.filter((d) => d.decision_id === id), id).toHaveLength(1);
      expect(await second.assembled.metrics.registry.metrics()).toMatch(/caracal_spool_torn_records 1\b/);
    } finally {
      await second.close();
    }
  });
});
