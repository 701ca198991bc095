/**
 * Probes until `done` holds or `timeoutMs` passes, then returns the last value (the caller's assertion on it says
 * what was expected): for state that settles in the background, such as a polled bundle.
 */
export async function eventually<T>(probe: () => Promise<T>, done: (value: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (done(value) || Date.now() > deadline) return value;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
