/**
 * Deployable entry point of the agent-facing gateway (container CMD, Helm): the same as
 * `caracal gateway start`. Logic lives in src/gateway/; this file only hands over argv.
 */
import { main } from '../src/cli/main.js';

process.exitCode = await main([process.argv[0]!, 'caracal', 'gateway', 'start', ...process.argv.slice(2)]);
