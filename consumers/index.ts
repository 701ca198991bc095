/**
 * Deployable entry point of the event consumers (container CMD, Helm): the same as
 * `caracal consumers start`. Logic lives in src/consumers/; this file only hands over argv.
 */
import { main } from '../src/cli/main.js';

process.exitCode = await main([process.argv[0]!, 'caracal', 'consumers', 'start', ...process.argv.slice(2)]);
