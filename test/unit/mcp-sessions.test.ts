// McpSessions (src/gateway/mcp-sessions.ts): what the MCP route remembers per server — who owns a session, which
// request ids are in flight in it, how many event streams each principal holds — with a clock the test moves. And
// RequestSlots, the connections to the server handed out to requests (with fake timers for the wait).
import { afterEach, describe, expect, it, vi } from 'vitest';
import { McpSessions, RequestSlots, type McpSessionLimits, type SlotRefusal } from '../../src/gateway/mcp-sessions.js';

const LIMITS: McpSessionLimits = { maxSessions: 100, maxSessionsPerPrincipal: 3, idleMs: 1_000, maxStreams: 3, maxStreamsPerPrincipal: 2 };

/** Sessions on a clock that only moves when the test says so. */
function sessions(limits: Partial<McpSessionLimits> = {}) {
  let t = 0;
  const store = new McpSessions({ ...LIMITS, ...limits }, () => t);
  return {
    store,
    at: (ms: number) => {
      t = ms;
    },
  };
}

function owners(store: McpSessions, ids: readonly string[]): (string | undefined)[] {
  return ids.map((id) => store.owner(id));
}

describe('McpSessions: owners', () => {
  it('tells a session’s owner, and nothing for a session it never saw', () => {
    const { store } = sessions();
    store.bind('s1', 'alice');
    expect(store.owner('s1')).toBe('alice');
    expect(store.owner('s2')).toBeUndefined();
    expect(store.size).toBe(1);
  });

  it('past a principal’s cap, forgets that principal’s least recently used session and no one else’s', () => {
    const { store, at } = sessions();
    at(0);
    store.bind('victim-1', 'victim');
    at(1);
    store.bind('a1', 'agent');
    at(2);
    store.bind('a2', 'agent');
    at(3);
    store.bind('a3', 'agent');
    // a1 is used again: a2 is now the agent's least recently used, and victim-1 the oldest of all.
    at(4);
    expect(store.owner('a1')).toBe('agent');
    at(5);
    store.bind('a4', 'agent');
    expect(owners(store, ['victim-1', 'a1', 'a2', 'a3', 'a4'])).toEqual(['victim', 'agent', undefined, 'agent', 'agent']);
    expect(store.size).toBe(4);
    // Opening sessions in a loop only ever costs the agent its own.
    for (let i = 0; i < 50; i++) {
      at(10 + i);
      store.bind(`loop-${i}`, 'agent');
    }
    expect(store.owner('victim-1')).toBe('victim');
    expect(store.size).toBe(1 + LIMITS.maxSessionsPerPrincipal);
  });

  it('past the cap in all, forgets the least recently used session of any principal', () => {
    const { store, at } = sessions({ maxSessions: 3 });
    at(0);
    store.bind('s1', 'p1');
    at(1);
    store.bind('s2', 'p2');
    at(2);
    store.bind('s3', 'p3');
    at(3);
    expect(store.owner('s1')).toBe('p1');
    at(4);
    store.bind('s4', 'p4');
    expect(owners(store, ['s1', 's2', 's3', 's4'])).toEqual(['p1', undefined, 'p3', 'p4']);
    expect(store.size).toBe(3);
  });

  it('forgets a session unused for longer than the idle time, counting from its last use', () => {
    const { store, at } = sessions();
    at(0);
    store.bind('s1', 'alice');
    at(900);
    expect(store.owner('s1')).toBe('alice');
    // Idle exactly idleMs since the last use: still there.
    at(1_900);
    expect(store.owner('s1')).toBe('alice');
    at(2_901);
    expect(store.owner('s1')).toBeUndefined();
    expect(store.size).toBe(0);
  });

  it('sweeps idle sessions when another is bound', () => {
    const { store, at } = sessions();
    at(0);
    store.bind('old-1', 'alice');
    store.bind('old-2', 'bob');
    at(500);
    store.bind('recent', 'carol');
    at(1_200);
    store.bind('new', 'alice');
    expect(store.size).toBe(2);
    expect(owners(store, ['recent', 'new'])).toEqual(['carol', 'alice']);
  });

  it('rebinding an id moves it to the new principal without counting it twice', () => {
    const { store, at } = sessions();
    at(0);
    store.bind('s', 'alice');
    at(1);
    store.bind('s', 'bob');
    expect(store.owner('s')).toBe('bob');
    expect(store.size).toBe(1);
    // alice has no session left to lose: three new ones fit under her cap.
    for (let i = 0; i < 3; i++) store.bind(`a${i}`, 'alice');
    expect(owners(store, ['s', 'a0', 'a1', 'a2'])).toEqual(['bob', 'alice', 'alice', 'alice']);
    store.forget('s');
    expect(store.owner('s')).toBeUndefined();
    expect(store.size).toBe(3);
  });
});

describe('McpSessions: request ids in flight', () => {
  it('refuses a key already claimed in the session, and a key repeated within one claim', () => {
    const { store } = sessions();
    const first = store.claimIds('s', ['n:1', 's:a', 'n:1']);
    expect([...first.taken]).toEqual(['n:1']);
    const second = store.claimIds('s', ['s:a', 'n:2']);
    expect([...second.taken]).toEqual(['s:a']);
    // Another session has ids of its own.
    expect([...store.claimIds('other', ['n:1', 's:a']).taken]).toEqual([]);
  });

  it('gives back exactly what was claimed, once', () => {
    const { store } = sessions();
    const holder = store.claimIds('s', ['n:5']);
    const refused = store.claimIds('s', ['n:5', 'n:6']);
    expect([...refused.taken]).toEqual(['n:5']);
    // The refused claim did not take n:5: releasing it leaves n:5 with its holder (and gives back n:6).
    refused.release();
    expect([...store.claimIds('s', ['n:5']).taken]).toEqual(['n:5']);
    const six = store.claimIds('s', ['n:6']);
    expect([...six.taken]).toEqual([]);
    holder.release();
    holder.release();
    const again = store.claimIds('s', ['n:5', 'n:6']);
    expect([...again.taken]).toEqual(['n:6']);
    // A second release of the holder does not free n:5 from its new claimant.
    holder.release();
    expect([...store.claimIds('s', ['n:5']).taken]).toEqual(['n:5']);
  });

  it('claims nothing for an empty list, and a released session’s ids are free again', () => {
    const { store } = sessions();
    const none = store.claimIds('s', []);
    expect(none.taken.size).toBe(0);
    none.release();
    const claim = store.claimIds('s', ['n:1', 'n:2']);
    claim.release();
    expect([...store.claimIds('s', ['n:1', 'n:2']).taken]).toEqual([]);
  });
});

describe('McpSessions: event streams', () => {
  it('caps streams per principal and in all, with the reason for each', () => {
    const { store } = sessions();
    const p1 = store.openStream('p');
    const p2 = store.openStream('p');
    expect('release' in p1 && 'release' in p2).toBe(true);
    expect(store.openStream('p')).toEqual({ refused: 'mcp_streams_per_principal' });
    const q1 = store.openStream('q');
    expect('release' in q1).toBe(true);
    expect(store.openStreams).toBe(3);
    // The server's streams are all taken: q, under its own cap, is refused for that.
    expect(store.openStream('q')).toEqual({ refused: 'mcp_streams_exhausted' });
    expect(store.openStream('r')).toEqual({ refused: 'mcp_streams_exhausted' });
  });

  it('gives a slot back once however many times it is released', () => {
    const { store } = sessions();
    const p1 = store.openStream('p');
    const p2 = store.openStream('p');
    const q1 = store.openStream('q');
    if (!('release' in p1) || !('release' in p2) || !('release' in q1)) throw new Error('expected three streams');
    p1.release();
    p1.release();
    p1.release();
    expect(store.openStreams).toBe(2);
    // One slot came back to p (not three): p holds one, opens one more, and is at its cap again.
    const p3 = store.openStream('p');
    expect('release' in p3).toBe(true);
    expect(store.openStream('p')).toEqual({ refused: 'mcp_streams_per_principal' });
    expect(store.openStreams).toBe(3);
    p2.release();
    q1.release();
    q1.release();
    if ('release' in p3) p3.release();
    expect(store.openStreams).toBe(0);
    // Everything is free again: two for p, one for q.
    expect(['p', 'p', 'q'].map((who) => 'release' in store.openStream(who))).toEqual([true, true, true]);
  });
});

type Slot = { release: () => void };
type Granted = Slot | SlotRefusal;

/** A wait that is never cancelled. */
const stays = () => {};

/** The slot of a grant (fails the test on a refusal). */
function slotOf(granted: Granted | undefined): Slot {
  if (granted === undefined || typeof granted === 'string') throw new Error(`expected a slot, got ${String(granted)}`);
  return granted;
}

/** An acquire whose outcome can be looked at without awaiting it (undefined while it waits). */
function pending(promise: Promise<Granted>): { readonly outcome: Granted | undefined } {
  const box: { outcome: Granted | undefined } = { outcome: undefined };
  void promise.then((granted) => (box.outcome = granted));
  return box;
}

/** Lets the callbacks of grants (and refusals) made synchronously run; microtasks only, so fake timers do not matter. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

// Finding (MED, second review): requests waited for a connection inside the connection pool (a priced call that timed
// out there was charged though it never left) and one principal could hold every connection. RequestSlots hands the
// connections out in the gateway: at once or in line (first come, first served), with a share per principal.
describe('RequestSlots', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('grants at once under capacity', async () => {
    const slots = new RequestSlots(2, 2);
    slotOf(await slots.acquire('p', 1_000, stays));
    slotOf(await slots.acquire('q', 1_000, stays));
    expect(slots.inUse).toBe(2);
    expect(slots.waiting).toBe(0);
  });

  it('refuses a principal at its share, counting the slots it holds and those it waits for', async () => {
    const slots = new RequestSlots(1, 2);
    const held = slotOf(await slots.acquire('p', 1_000, stays));
    // The server's one connection is taken: p's second request waits, and counts against p's share.
    const waiting = pending(slots.acquire('p', 1_000, stays));
    await settle();
    expect(waiting.outcome).toBeUndefined();
    expect(slots.waiting).toBe(1);
    expect(await slots.acquire('p', 1_000, stays)).toBe('mcp_connections_per_principal');
    // A refusal neither waits nor takes anything.
    expect(slots.waiting).toBe(1);
    expect(slots.inUse).toBe(1);
    // Another principal is not refused for p's share: it waits its turn.
    const other = pending(slots.acquire('q', 1_000, stays));
    await settle();
    expect(other.outcome).toBeUndefined();
    expect(slots.waiting).toBe(2);
    held.release();
    await settle();
    slotOf(waiting.outcome).release();
    await settle();
    slotOf(other.outcome).release();
    expect(slots.inUse).toBe(0);
    expect(slots.waiting).toBe(0);
  });

  it('hands a released slot to the first in line, in the order they came, whoever they are', async () => {
    const slots = new RequestSlots(1, 3);
    let current = slotOf(await slots.acquire('a', 1_000, stays));
    const granted: string[] = [];
    const line = ['b', 'c', 'b', 'a'].map((who, n) => {
      const name = `${who}${n}`;
      const waiter = pending(
        slots.acquire(who, 1_000, stays).then((g) => {
          granted.push(name);
          return g;
        }),
      );
      return { name, waiter };
    });
    await settle();
    expect(slots.waiting).toBe(4);
    for (const { name, waiter } of line) {
      current.release();
      await settle();
      expect(granted.at(-1)).toBe(name);
      // The slot went straight to the next in line: it was never free for a newcomer.
      expect(slots.inUse).toBe(1);
      current = slotOf(waiter.outcome);
    }
    expect(granted).toEqual(['b0', 'c1', 'b2', 'a3']);
    current.release();
    expect(slots.inUse).toBe(0);
  });

  it('a released slot goes to the next waiter even of another principal, and counts against that principal', async () => {
    const slots = new RequestSlots(1, 1);
    const mine = slotOf(await slots.acquire('a', 1_000, stays));
    const theirs = pending(slots.acquire('b', 1_000, stays));
    await settle();
    mine.release();
    await settle();
    const handed = slotOf(theirs.outcome);
    expect(slots.inUse).toBe(1);
    expect(slots.waiting).toBe(0);
    // b now holds its share (one); a's is free again, so a waits rather than being refused.
    expect(await slots.acquire('b', 1_000, stays)).toBe('mcp_connections_per_principal');
    const again = pending(slots.acquire('a', 1_000, stays));
    await settle();
    expect(again.outcome).toBeUndefined();
    expect(slots.waiting).toBe(1);
    handed.release();
    await settle();
    slotOf(again.outcome).release();
    expect(slots.inUse).toBe(0);
  });

  it('refuses a wait past its time with mcp_upstream_busy, and frees the principal’s count', async () => {
    vi.useFakeTimers();
    const slots = new RequestSlots(1, 1);
    const held = slotOf(await slots.acquire('a', 1_000, stays));
    const waiter = pending(slots.acquire('b', 500, stays));
    await vi.advanceTimersByTimeAsync(499);
    expect(waiter.outcome).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(waiter.outcome).toBe('mcp_upstream_busy');
    expect(slots.waiting).toBe(0);
    expect(slots.inUse).toBe(1);
    // b's count went with its wait: it may wait again (not refused for its share), and a release now goes to it.
    const next = pending(slots.acquire('b', 500, stays));
    await settle();
    expect(next.outcome).toBeUndefined();
    held.release();
    await settle();
    const slot = slotOf(next.outcome);
    // Its timer is gone with the grant: nothing changes once the wait's time is past.
    await vi.advanceTimersByTimeAsync(1_000);
    expect(slots.inUse).toBe(1);
    slot.release();
    expect(slots.inUse).toBe(0);
    expect(slots.waiting).toBe(0);
  });

  it('refuses a cancelled wait with client_closed, takes it out of the line and frees the principal’s count', async () => {
    vi.useFakeTimers();
    const slots = new RequestSlots(1, 1);
    const held = slotOf(await slots.acquire('a', 1_000, stays));
    let cancel: (() => void) | undefined;
    const waiter = pending(slots.acquire('b', 1_000, (onCancel) => (cancel = onCancel)));
    const behind = pending(slots.acquire('c', 1_000, stays));
    await settle();
    expect(slots.waiting).toBe(2);
    cancel!();
    await settle();
    expect(waiter.outcome).toBe('client_closed');
    expect(slots.waiting).toBe(1);
    // Cancelling again, or the wait's time passing, changes nothing.
    cancel!();
    await vi.advanceTimersByTimeAsync(999);
    expect(waiter.outcome).toBe('client_closed');
    // The released slot skips the cancelled wait and goes to c; b may ask again.
    held.release();
    await settle();
    const cSlot = slotOf(behind.outcome);
    const bAgain = pending(slots.acquire('b', 1_000, stays));
    await settle();
    expect(bAgain.outcome).toBeUndefined();
    cSlot.release();
    await settle();
    slotOf(bAgain.outcome).release();
    expect(slots.inUse).toBe(0);
  });

  it('ignores a cancel that comes after the grant', async () => {
    const slots = new RequestSlots(1, 1);
    const held = slotOf(await slots.acquire('a', 1_000, stays));
    let cancel: (() => void) | undefined;
    const waiter = pending(slots.acquire('b', 1_000, (onCancel) => (cancel = onCancel)));
    held.release();
    await settle();
    const slot = slotOf(waiter.outcome);
    cancel!();
    expect(slots.inUse).toBe(1);
    // b still holds its share: the late cancel did not give it back.
    expect(await slots.acquire('b', 1_000, stays)).toBe('mcp_connections_per_principal');
    slot.release();
    expect(slots.inUse).toBe(0);
  });

  it('gives a slot back once however many times it is released', async () => {
    const slots = new RequestSlots(2, 2);
    const first = slotOf(await slots.acquire('a', 1_000, stays));
    const second = slotOf(await slots.acquire('a', 1_000, stays));
    first.release();
    first.release();
    first.release();
    expect(slots.inUse).toBe(1);
    // One slot came back (to the server and to a): a gets one more, and is at its share again.
    const third = slotOf(await slots.acquire('a', 1_000, stays));
    expect(await slots.acquire('a', 1_000, stays)).toBe('mcp_connections_per_principal');
    // The server is full too: a newcomer waits; repeated releases of the old slot do not let it in.
    const newcomer = pending(slots.acquire('b', 1_000, stays));
    first.release();
    await settle();
    expect(newcomer.outcome).toBeUndefined();
    expect(slots.inUse).toBe(2);
    second.release();
    await settle();
    const bSlot = slotOf(newcomer.outcome);
    third.release();
    bSlot.release();
    bSlot.release();
    expect(slots.inUse).toBe(0);
    expect(slots.waiting).toBe(0);
  });
});
