import { Spool } from '../../src/spool/spool.js';

/**
 * Appends to the spool in `argv[2]` until killed, from 8 concurrent loops, and prints the id of
 * every record whose append resolved (one per line). The parent SIGKILLs it mid-stream and checks
 * that everything printed survived.
 */
const dir = process.argv[2];
if (!dir) throw new Error('usage: spool-child <dir>');
const spool = await Spool.open({ dir, maxBytes: 1024 * 1024 * 1024, segmentBytes: 256 * 1024 });
process.stdout.write('ready\n');
let next = 0;
// The parent kills this process; the bound only keeps a forgotten child from running forever.
const deadline = Date.now() + 60_000;
async function loop(): Promise<void> {
  while (Date.now() < deadline) {
    const id = `r${next++}`;
    await spool.append([{ topic: 'decisions', key: `k${next % 7}`, value: JSON.stringify({ id, pad: 'x'.repeat(200) }) }]);
    process.stdout.write(`${id}\n`);
  }
}
await Promise.all(Array.from({ length: 8 }, loop));
await spool.close();
