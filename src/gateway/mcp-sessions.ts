/**
 * What the gateway remembers about the MCP sessions of one server, and why:
 *
 *   owners      a session belongs to the principal that opened it; anyone else presenting its id is told it does not
 *               exist. Bounded per principal (one principal opening sessions in a loop forgets its own oldest, never
 *               another's) and in all, and forgotten after an idle time.
 *   request ids two requests in flight in one session must not share an id: the server routes an answer by its id, so
 *               a listing asked on one POST (whose answer the gateway filters) could come back on another POST that
 *               asked something else (whose answer it does not).
 *   streams     event streams (GET) stay open for as long as a session lives; they are counted per principal and in
 *               all so that one agent's streams cannot take every connection to the server.
 */
import type { Clock } from './limits.js';

export interface McpSessionLimits {
  /** Sessions remembered in all (the least recently used is forgotten first). */
  maxSessions: number;
  /** Sessions remembered per principal (its least recently used is forgotten first). */
  maxSessionsPerPrincipal: number;
  /** A session unused this long is forgotten. */
  idleMs: number;
  /** Event streams open at once, in all. */
  maxStreams: number;
  /** Event streams open at once per principal. */
  maxStreamsPerPrincipal: number;
}

interface Owned {
  principal: string;
  lastUsed: number;
}

export class McpSessions {
  /** Insertion order is use order: a session is moved to the end each time it is used. */
  private readonly owners = new Map<string, Owned>();
  private readonly byPrincipal = new Map<string, Set<string>>();
  private readonly inFlight = new Map<string, Map<string, number>>();
  private readonly streams = new Map<string, number>();
  private streamCount = 0;

  constructor(
    private readonly limits: McpSessionLimits,
    private readonly now: Clock = Date.now,
  ) {}

  /** The principal that owns a live session (and marks it used), or undefined. */
  owner(sessionId: string): string | undefined {
    const owned = this.owners.get(sessionId);
    if (!owned) return undefined;
    const at = this.now();
    if (at - owned.lastUsed > this.limits.idleMs) {
      this.forget(sessionId);
      return undefined;
    }
    owned.lastUsed = at;
    this.owners.delete(sessionId);
    this.owners.set(sessionId, owned);
    return owned.principal;
  }

  bind(sessionId: string, principal: string): void {
    this.forget(sessionId);
    this.sweepIdle();
    let mine = this.byPrincipal.get(principal);
    if (!mine) this.byPrincipal.set(principal, (mine = new Set()));
    while (mine.size >= this.limits.maxSessionsPerPrincipal) this.forget(this.leastRecentlyUsed(mine)!);
    while (this.owners.size >= this.limits.maxSessions) this.forget(this.owners.keys().next().value!);
    this.owners.set(sessionId, { principal, lastUsed: this.now() });
    mine.add(sessionId);
  }

  forget(sessionId: string): void {
    const owned = this.owners.get(sessionId);
    if (!owned) return;
    this.owners.delete(sessionId);
    const mine = this.byPrincipal.get(owned.principal);
    mine?.delete(sessionId);
    if (mine?.size === 0) this.byPrincipal.delete(owned.principal);
  }

  get size(): number {
    return this.owners.size;
  }

  /**
   * Claims request id keys for a session while its POST is in flight: the keys that are already taken (by another
   * POST of the session, or twice in this one) are returned and not claimed; the others are. `release` gives back
   * exactly what was claimed.
   */
  claimIds(sessionId: string, keys: readonly string[]): { taken: Set<string>; release: () => void } {
    let live = this.inFlight.get(sessionId);
    if (!live) this.inFlight.set(sessionId, (live = new Map()));
    const taken = new Set<string>();
    const claimed: string[] = [];
    for (const key of keys) {
      if (live.has(key)) taken.add(key);
      else {
        live.set(key, 1);
        claimed.push(key);
      }
    }
    let released = false;
    const map = live;
    return {
      taken,
      release: () => {
        if (released) return;
        released = true;
        for (const key of claimed) map.delete(key);
        if (map.size === 0 && this.inFlight.get(sessionId) === map) this.inFlight.delete(sessionId);
      },
    };
  }

  /** Takes a stream slot for a principal; refused when it has as many as allowed, or the server does. */
  openStream(principal: string): { release: () => void } | { refused: 'mcp_streams_per_principal' | 'mcp_streams_exhausted' } {
    const mine = this.streams.get(principal) ?? 0;
    if (mine >= this.limits.maxStreamsPerPrincipal) return { refused: 'mcp_streams_per_principal' };
    if (this.streamCount >= this.limits.maxStreams) return { refused: 'mcp_streams_exhausted' };
    this.streams.set(principal, mine + 1);
    this.streamCount++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.streamCount--;
        decrement(this.streams, principal);
      },
    };
  }

  get openStreams(): number {
    return this.streamCount;
  }

  private leastRecentlyUsed(sessions: Set<string>): string | undefined {
    let oldest: string | undefined;
    let at = Infinity;
    for (const id of sessions) {
      const used = this.owners.get(id)?.lastUsed ?? -Infinity;
      if (used < at) {
        at = used;
        oldest = id;
      }
    }
    return oldest;
  }

  /** Forgets idle sessions from the least recently used end (each is looked at once: amortised O(1) per bind). */
  private sweepIdle(): void {
    const at = this.now();
    for (const [id, owned] of this.owners) {
      if (at - owned.lastUsed <= this.limits.idleMs) break;
      this.forget(id);
    }
  }
}

export type SlotRefusal = 'mcp_connections_per_principal' | 'mcp_upstream_busy' | 'client_closed';

/**
 * Connections to the server for requests (POST, DELETE), handed out by the gateway rather than queued inside the
 * connection pool: a request either has a connection at once or waits in line here, so the gateway knows whether it
 * ever left (a charged tool call that never did is given back), and no principal holds more than its share while
 * answers stream back.
 */
export class RequestSlots {
  private used = 0;
  private readonly held = new Map<string, number>();
  private readonly line: { principal: string; grant: (slot: { release: () => void } | SlotRefusal) => void }[] = [];

  constructor(
    readonly capacity: number,
    readonly perPrincipal: number,
  ) {}

  /**
   * A slot at once, or after waiting in line (first come, first served) for at most `waitMs`; refused at once when
   * the principal already holds or waits for its share. `cancelled` registers a callback for giving up the wait.
   */
  acquire(principal: string, waitMs: number, cancelled: (onCancel: () => void) => void): Promise<{ release: () => void } | SlotRefusal> {
    const mine = this.held.get(principal) ?? 0;
    if (mine >= this.perPrincipal) return Promise.resolve('mcp_connections_per_principal');
    this.held.set(principal, mine + 1);
    if (this.used < this.capacity) return Promise.resolve(this.grant(principal));
    return new Promise((resolve) => {
      let done = false;
      const entry = {
        principal,
        grant: (slot: { release: () => void } | SlotRefusal) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          resolve(slot);
        },
      };
      const leave = (why: SlotRefusal) => {
        const at = this.line.indexOf(entry);
        if (at < 0) return;
        this.line.splice(at, 1);
        this.unhold(principal);
        entry.grant(why);
      };
      const timer = setTimeout(() => leave('mcp_upstream_busy'), waitMs);
      cancelled(() => leave('client_closed'));
      this.line.push(entry);
    });
  }

  get inUse(): number {
    return this.used;
  }

  get waiting(): number {
    return this.line.length;
  }

  private grant(principal: string): { release: () => void } {
    this.used++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.used--;
        this.unhold(principal);
        const next = this.line.shift();
        if (next) next.grant(this.grant(next.principal));
      },
    };
  }

  private unhold(principal: string): void {
    decrement(this.held, principal);
  }
}

/** One less for `key`; a count that reaches zero is removed, so the map holds only principals with something open. */
function decrement(counts: Map<string, number>, key: string): void {
  const left = (counts.get(key) ?? 1) - 1;
  if (left > 0) counts.set(key, left);
  else counts.delete(key);
}
