import { describe, expect, it } from 'vitest';
import { formatTileIndex, formatTilePath, leavesNeeded, parseTilePath, TilePathError, type Tile } from '../../src/ledger/tiles.js';

describe('c2sp.org/tlog-tiles paths', () => {
  it('encodes indices as 3-digit groups with "x" on all but the last (the spec example and edges)', () => {
    expect(formatTileIndex(1234067)).toBe('x001/x234/067');
    expect(formatTileIndex(0)).toBe('000');
    expect(formatTileIndex(5)).toBe('005');
    expect(formatTileIndex(999)).toBe('999');
    expect(formatTileIndex(1000)).toBe('x001/000');
    expect(formatTileIndex(1_000_000)).toBe('x001/x000/000');
    expect(formatTileIndex(Number.MAX_SAFE_INTEGER)).toBe('x009/x007/x199/x254/x740/991');
    expect(() => formatTileIndex(-1)).toThrow();
    expect(() => formatTileIndex(1.5)).toThrow();
  });

  it('formats and parses hash tiles and entry bundles, full and partial, as round trips', () => {
    const cases: [Tile, string][] = [
      [{ kind: 'hash', level: 0, index: 1234067, width: 256 }, 'tile/0/x001/x234/067'],
      [{ kind: 'hash', level: 1, index: 0, width: 17 }, 'tile/1/000.p/17'],
      [{ kind: 'hash', level: 63, index: 7, width: 1 }, 'tile/63/007.p/1'],
      [{ kind: 'entries', level: 0, index: 1000, width: 255 }, 'tile/entries/x001/000.p/255'],
      [{ kind: 'entries', level: 0, index: 3, width: 256 }, 'tile/entries/003'],
    ];
    for (const [tile, path] of cases) {
      expect(formatTilePath(tile)).toBe(path);
      expect(parseTilePath(path)).toEqual(tile);
    }
    for (let index = 0; index < 5_000_000; index += 99_991) {
      for (const width of [1, 128, 255, 256]) {
        const tile: Tile = { kind: 'hash', level: index % 4, index, width };
        expect(parseTilePath(formatTilePath(tile))).toEqual(tile);
      }
    }
  });

  it('refuses every non-canonical or malformed spelling', () => {
    const bad = [
      '',
      'tile',
      'tile/0',
      'tile/0/',
      'tiles/0/000',
      'tile/0/1',
      'tile/0/01',
      'tile/0/0001',
      'tile/0/x001',
      'tile/0/001/002',
      'tile/0/x000/001', // leading zero group
      'tile/0/X001/002',
      'tile/0/x001/x002', // last group with x
      'tile/0/000/',
      'tile/00/000',
      'tile/01/000',
      'tile/64/000',
      'tile/-1/000',
      'tile/+1/000',
      'tile/1e1/000',
      'tile/data/000',
      'tile/0/000.p',
      'tile/0/000.p/',
      'tile/0/000.p/0',
      'tile/0/000.p/256',
      'tile/0/000.p/007',
      'tile/0/000.p/1/2',
      'tile/0/000.p/1.p/2',
      'tile/0/x000.p/1',
      'tile/0/ 000',
      'tile/0/%30%30%30',
      'tile/0/x001/x002/x003/x004/x005/x006/007', // more groups than a safe integer holds
      'tile/0/x999/x999/x999/x999/x999/999', // above 2^53
      `tile/0/${'x001/'.repeat(40)}000`,
      'tile/entries/000.p/256',
      'tile/entries/1',
    ];
    for (const path of bad) expect(() => parseTilePath(path), path).toThrow(TilePathError);
  });

  it('knows how many leaves a tree needs before a tile exists', () => {
    expect(leavesNeeded({ kind: 'hash', level: 0, index: 0, width: 256 })).toBe(256);
    expect(leavesNeeded({ kind: 'hash', level: 0, index: 1, width: 44 })).toBe(300);
    expect(leavesNeeded({ kind: 'entries', level: 0, index: 1, width: 44 })).toBe(300);
    expect(leavesNeeded({ kind: 'hash', level: 1, index: 0, width: 1 })).toBe(256);
    expect(leavesNeeded({ kind: 'hash', level: 2, index: 0, width: 1 })).toBe(65_536);
    // The spec's example: a tree of 70,000 has one full level-1 tile and a partial one (index 1) of width 17.
    expect(leavesNeeded({ kind: 'hash', level: 1, index: 1, width: 17 })).toBeLessThanOrEqual(70_000);
    expect(leavesNeeded({ kind: 'hash', level: 1, index: 1, width: 18 })).toBeGreaterThan(70_000);
    expect(leavesNeeded({ kind: 'hash', level: 7, index: 0, width: 1 })).toBe(Infinity);
    expect(leavesNeeded({ kind: 'hash', level: 63, index: 0, width: 1 })).toBe(Infinity);
  });
});
