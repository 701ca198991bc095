import type { Command } from 'commander';
import { UpstreamSchema, type CaracalConfig } from '../../config/schema.js';
import { startEchoUpstream, type EchoUpstream } from '../../dev/echo-upstream.js';
import { startGateway, type RunningGateway } from '../../gateway/server.js';
import type { CliRuntime } from '../runtime.js';
import { startConsumers } from '../../consumers/index.js';

/** Resolves once SIGINT/SIGTERM has shut the gateway down; a second signal or the timer forces exit. */
function untilSignal(running: RunningGateway, graceMs: number, extra: () => Promise<void> = async () => {}): Promise<void> {
  return new Promise((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) process.exit(130);
      stopping = true;
      process.stderr.write(`caracal: ${signal} received, draining…\n`);
      const backstop = setTimeout(() => {
        process.stderr.write('caracal: shutdown took too long, exiting\n');
        process.exit(1);
      }, graceMs + 5_000);
      backstop.unref();
      void running
        .close()
        .then(extra)
        .finally(() => {
          clearTimeout(backstop);
          resolve();
        });
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}

function banner(rt: CliRuntime, running: RunningGateway, config: Readonly<CaracalConfig>, demo: boolean): void {
  const events = running.ctx.config.kafka.brokers ? 'kafka' : 'embedded log';
  const db = config.database.url ? 'postgresql' : `pglite (${config.home})`;
  rt.out.line(`caracal gateway listening on ${running.gatewayUrl}  (database: ${db}, events: ${events}, cache: ${config.redis.url ? 'redis' : 'in-process'})`);
  rt.out.line(`  agents call      ${running.gatewayUrl}/proxy/<upstream>/<path>   upstreams: ${config.gateway.upstreams.map((u) => u.name).join(', ') || '(none configured)'}`);
  rt.out.line(`  health           ${running.gatewayUrl}/health   ${running.gatewayUrl}/ready`);
  rt.out.line(`  metrics          ${running.metricsUrl}/metrics`);
  rt.out.line(`  admin API        ${running.adminUrl}  (loopback; the CLI uses it while this runs)`);
  if (demo) {
    rt.out.line('');
    rt.out.line('next, in another terminal in this folder (README.md has the full walkthrough):');
    rt.out.line('  alias caracal="node $PWD/bin/caracal.js"');
    rt.out.line('  AGENT=$(caracal agent register --name my-agent --owner you@example.com --quiet)');
    rt.out.line('  caracal policy create --agent-id $AGENT --resources "api:external/echo" --actions read --max-validity 3600');
    rt.out.line(`  caracal allowlist create --agent-id $AGENT --pattern "${config.gateway.upstreams[0]!.url}/**" --pattern-type glob`);
    rt.out.line('  TOKEN=$(caracal token issue --agent-id $AGENT)');
    rt.out.line(`  curl -s -H "authorization: Bearer $TOKEN" ${running.gatewayUrl}/proxy/echo/hello`);
  }
  rt.out.line('stop with Ctrl-C');
}

export function registerServeCommands(program: Command, rt: () => CliRuntime): void {
  program
    .command('gateway')
    .description('the agent-facing gateway')
    .command('start')
    .description('start the gateway (+ admin API and metrics) against whatever the config names')
    .action(async () => {
      const runtime = rt();
      const config = runtime.config();
      const running = await startGateway(config);
      banner(runtime, running, config, false);
      await untilSignal(running, config.gateway.shutdownGraceMs);
    });

  program
    .command('dev')
    .description('run every role (gateway, admin API, consumers) in one process on the embedded default (what `npm start` runs)')
    .action(async () => {
      const runtime = rt();
      let config = runtime.config();
      let echo: EchoUpstream | undefined;
      // With no upstream configured, serve a local echo upstream so the walkthrough works offline.
      if (config.gateway.upstreams.length === 0) {
        echo = await startEchoUpstream();
        config = { ...config, gateway: { ...config.gateway, upstreams: [UpstreamSchema.parse({ name: 'echo', url: echo.url })] } };
      }
      // The consumers share the gateway's process and context (one embedded database).
      const running = await startGateway(config, { companions: (ctx) => startConsumers(ctx, undefined, { prepare: false }) }).catch(async (err) => {
        await echo?.close();
        throw err;
      });
      banner(runtime, running, config, echo !== undefined);
      await untilSignal(running, config.gateway.shutdownGraceMs, async () => echo?.close());
    });
}
