import net from 'node:net';

/**
 * A loopback port nothing listens on: connecting to it is refused. Picked below the kernel's ephemeral range
 * (/proc/sys/net/ipv4/ip_local_port_range, 32768 and up by default), where `listen(0)` elsewhere in the same run
 * never hands it out again — a port from the ephemeral range can be reused by the next server the test starts.
 */
export async function closedPort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const server = net.createServer();
    const free = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (!free) continue;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    return port;
  }
  throw new Error('no free loopback port below the ephemeral range');
}
