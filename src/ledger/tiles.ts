// c2sp.org/tlog-tiles over the stored tree: tile paths (parse and format, strictly canonical) and tile contents read
// from `ledger_hashes` / `ledger_entries` with one statement per tile. See README.md ("Receipts and tiles over HTTP").
//
// The path encoding follows c2sp.org/tlog-tiles and golang.org/x/mod/sumdb/tlog (tile.go: Tile.Path, ParseTilePath),
// with the tile height fixed at 8 and no height element in the path. Unlike sumdb's parser, which accepts any number
// of 1-3 digit groups, only the one canonical spelling of each tile is accepted here: a tile has exactly one URL.
import type { Queryable } from '../store/db.js';
import { LedgerError } from './errors.js';
import { MAX_LEAF_BYTES, readCoveredEntries, readCoveredHashes } from './store.js';

/** Tile height: each tile is a subtree of height 8, 256 hashes wide when full. */
export const TILE_HEIGHT = 8;
export const TILE_WIDTH = 256;
/** Tile levels the spec allows in a path (0-63); what any tree of ≤ 2^53 leaves has is far fewer. */
export const MAX_TILE_LEVEL = 63;
/** An entry bundle's length prefix is a big-endian uint16 (the writer refuses larger events: MAX_LEAF_BYTES). */
export const MAX_BUNDLED_ENTRY_BYTES = MAX_LEAF_BYTES;

export interface Tile {
  /** Hash tile (`hash`, level 0-63) or entry bundle (`entries`, which has level 0's shape). */
  kind: 'hash' | 'entries';
  level: number;
  /** Index of the tile within its level. */
  index: number;
  /** 1-256; 256 is a full tile (no `.p/<W>` suffix). */
  width: number;
}

/** A tile path that is not the canonical spelling of a tile (→ 400). */
export class TilePathError extends Error {
  override readonly name = 'TilePathError';
}

/** `N` as 3-digit groups, `x` before all but the last: 1234067 → `x001/x234/067`, 5 → `005`. */
export function formatTileIndex(index: number): string {
  if (!Number.isSafeInteger(index) || index < 0) throw new LedgerError('INVALID_ARGUMENT', `tile index must be a non-negative safe integer, got ${index}`);
  const groups: string[] = [];
  let rest = index;
  do {
    groups.unshift(String(rest % 1000).padStart(3, '0'));
    rest = Math.floor(rest / 1000);
  } while (rest > 0);
  return groups.map((group, i) => (i < groups.length - 1 ? `x${group}` : group)).join('/');
}

/** `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`, relative to the log's prefix. */
export function formatTilePath(tile: Tile): string {
  const { kind, level, index, width } = tile;
  if (kind === 'hash' && (!Number.isInteger(level) || level < 0 || level > MAX_TILE_LEVEL)) throw new LedgerError('INVALID_ARGUMENT', `tile level must be 0-${MAX_TILE_LEVEL}, got ${level}`);
  if (!Number.isInteger(width) || width < 1 || width > TILE_WIDTH) throw new LedgerError('INVALID_ARGUMENT', `tile width must be 1-${TILE_WIDTH}, got ${width}`);
  const partial = width < TILE_WIDTH ? `.p/${width}` : '';
  return `tile/${kind === 'entries' ? 'entries' : String(level)}/${formatTileIndex(index)}${partial}`;
}

const LEVEL = /^(?:0|[1-9][0-9]?)$/;
const WIDTH = /^[1-9][0-9]{0,2}$/;
const INNER_GROUP = /^x[0-9]{3}$/;
const LAST_GROUP = /^[0-9]{3}$/;
/** More groups than this cannot be a safe integer (10^18 > 2^53); refused before any arithmetic. */
const MAX_GROUPS = 6;

/**
 * Parses a tile path (`tile/…`, relative to the log's prefix). Throws TilePathError for anything but the canonical
 * spelling: level 0-63 without leading zeroes (or `entries`), index groups of exactly 3 digits with `x` on all but
 * the last and no leading `x000`, width 1-255 without leading zeroes, nothing else.
 */
export function parseTilePath(path: string): Tile {
  const bad = (why: string) => new TilePathError(`not a tile path (${why})`);
  if (path.length > 128) throw bad('too long');
  const parts = path.split('/');
  if (parts.length < 3 || parts[0] !== 'tile') throw bad('expected tile/<L>/<N>[.p/<W>]');
  let kind: Tile['kind'] = 'hash';
  let level = 0;
  if (parts[1] === 'entries') kind = 'entries';
  else if (LEVEL.test(parts[1]!) && Number(parts[1]) <= MAX_TILE_LEVEL) level = Number(parts[1]);
  else throw bad(`level must be "entries" or 0-${MAX_TILE_LEVEL} without leading zeroes`);
  let groups = parts.slice(2);
  let width = TILE_WIDTH;
  const last = groups.at(-2);
  if (last !== undefined && last.endsWith('.p')) {
    const w = groups.at(-1)!;
    if (!WIDTH.test(w) || Number(w) >= TILE_WIDTH) throw bad(`partial width must be 1-${TILE_WIDTH - 1} without leading zeroes`);
    width = Number(w);
    groups = [...groups.slice(0, -2), last.slice(0, -2)];
  }
  if (groups.length > MAX_GROUPS) throw bad('index too large');
  let index = 0;
  groups.forEach((group, i) => {
    const isLast = i === groups.length - 1;
    if (!(isLast ? LAST_GROUP : INNER_GROUP).test(group)) throw bad('index must be 3-digit groups, "x" before all but the last');
    index = index * 1000 + Number(isLast ? group : group.slice(1));
  });
  if (groups.length > 1 && groups[0] === 'x000') throw bad('index has a leading zero group');
  if (!Number.isSafeInteger(index)) throw bad('index too large');
  const tile: Tile = { kind, level, index, width };
  // Belt and braces: the one spelling of this tile is the one asked for.
  if (formatTilePath(tile) !== path) throw bad('not canonical');
  return tile;
}

/**
 * How many leaves a tree needs before the tile exists: the tile's last hash is the subtree of leaves
 * `[(N·256 + W − 1)·256^L, (N·256 + W)·256^L)`. Infinity when that is beyond any tree (no safe integer).
 */
export function leavesNeeded(tile: Tile): number {
  const nodes = tile.index * TILE_WIDTH + tile.width;
  const level = tile.kind === 'entries' ? 0 : tile.level;
  // A power of two: the product is exact until it leaves the safe range.
  const leaves = nodes * 2 ** (TILE_HEIGHT * level);
  return Number.isSafeInteger(leaves) ? leaves : Infinity;
}

export interface TileContent {
  /** Concatenated 32-byte hashes, or uint16-length-prefixed entries. */
  body: Buffer;
  full: boolean;
  /** The newest checkpoint's size, which covers the tile. */
  checkpointSize: number;
}

/**
 * The tile's bytes, or null when the newest signed checkpoint of `origin` does not cover it (→ 404): only what a
 * verified checkpoint requires ever leaves the store. One statement. A covered tile with a missing row means the
 * store is damaged: that throws (a 500, logged), never a short tile.
 */
export async function readTile(db: Queryable, origin: string, tile: Tile): Promise<TileContent | null> {
  const needed = leavesNeeded(tile);
  if (needed === Infinity) return null;
  const from = tile.index * TILE_WIDTH;
  const to = from + tile.width;
  const full = tile.width === TILE_WIDTH;
  if (tile.kind === 'entries') {
    const { checkpointSize, entries } = await readCoveredEntries(db, origin, from, to);
    if (checkpointSize < needed) return null;
    const chunks: Buffer[] = [];
    entries.forEach(({ index, canonical }, i) => {
      if (index !== from + i) throw new LedgerError('HASH_READER', `ledger ${origin}: leaf ${from + i} is not stored`);
      if (canonical.length > MAX_BUNDLED_ENTRY_BYTES) throw new LedgerError('INVALID_ARGUMENT', `ledger ${origin}: leaf ${index} has ${canonical.length} bytes, more than an entry bundle can hold (${MAX_BUNDLED_ENTRY_BYTES})`);
      const length = Buffer.alloc(2);
      length.writeUInt16BE(canonical.length);
      chunks.push(length, canonical);
    });
    if (entries.length !== tile.width) throw new LedgerError('HASH_READER', `ledger ${origin}: leaves ${from}-${to - 1} are covered by a checkpoint but ${entries.length} are stored`);
    return { body: Buffer.concat(chunks), full, checkpointSize };
  }
  // Level L of the tiles is level 8L of the tree: the level ledger_hashes keeps those subtrees at.
  const level = tile.level * TILE_HEIGHT;
  if (level > 63) return null;
  const { checkpointSize, hashes } = await readCoveredHashes(db, origin, level, from, to, needed);
  if (checkpointSize < needed) return null;
  if (hashes.length !== tile.width || hashes.some(({ index }, i) => index !== from + i)) {
    throw new LedgerError('HASH_READER', `ledger ${origin}: nodes ${level}/${from}-${to - 1} are covered by a checkpoint but not all stored`);
  }
  return { body: Buffer.concat(hashes.map(({ hash }) => hash)), full, checkpointSize };
}
