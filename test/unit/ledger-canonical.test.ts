import canonicalizeModule from 'canonicalize';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalBytes, canonicalJson, eventLeafHash, leafHash } from '../../src/ledger/index.js';

// CommonJS with ESM-style typings: at run time the default import is the function.
type Canonicalize = (value: unknown) => string | undefined;
const referenceCanonicalize = ((canonicalizeModule as unknown as { default?: Canonicalize }).default ?? canonicalizeModule) as unknown as Canonicalize;

describe('RFC 8785 canonical JSON', () => {
  it('matches the sample of cyberphone/json-canonicalization (README), byte for byte', () => {
    const input = JSON.parse(
      '{"numbers": [1E30,4.50,6,2e-3,0.000000000000000000000000001], "escaping": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", "other": [null, true, false]}',
    ) as unknown;
    expect(canonicalJson(input)).toBe('{"escaping":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/","numbers":[1e+30,4.5,6,0.002,1e-27],"other":[null,true,false]}');
    expect(canonicalBytes(input).toString('hex')).toBe(
      [
        '7b22657363617069 6e67223a22e282ac245c75303030665c6e4127425c225c5c5c5c5c222f222c226e756d62657273',
        '223a5b31652b33302c342e352c362c302e3030322c31652d32375d2c226f74686572223a5b6e756c6c2c747275652c66616c73655d7d',
      ]
        .join('')
        .replaceAll(' ', ''),
    );
  });

  it('sorts keys by UTF-16 code units, recursively (cyberphone testdata "structures", RFC 8785 §3.2.3)', () => {
    const structures = { '1': { f: { f: 'hi', F: 5 }, '\n': 56.0 }, '10': {}, '': 'empty', a: {}, '111': [{ e: 'yes', E: 'no' }], A: {} };
    expect(canonicalJson(structures)).toBe('{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{"E":"no","e":"yes"}],"A":{},"a":{}}');
    const sorting = { '\u20ac': 'Euro', '\r': 'CR', '\ufb33': 'Dalet', '1': 'One', '\ud83d\ude00': 'Emoji', '\u0080': 'Control', '\u00f6': 'o' };
    expect(canonicalJson(sorting)).toBe(
      '{"\\r":"CR","1":"One","\u0080":"Control","\u00f6":"o","\u20ac":"Euro","\ud83d\ude00":"Emoji","\ufb33":"Dalet"}',
    );
  });

  it('serialises numbers as ECMAScript does, -0 as 0', () => {
    expect(canonicalJson(JSON.parse('[-0, 1e21, 1e-7, 333333333.33333329, 9007199254740993]'))).toBe('[0,1e+21,1e-7,333333333.3333333,9007199254740992]');
  });

  it('omits undefined object members, like JSON, and accepts null-prototype objects', () => {
    expect(canonicalJson({ b: 1, a: undefined })).toBe('{"b":1}');
    const bare = Object.assign(Object.create(null) as Record<string, unknown>, { z: 1, y: [true] });
    expect(canonicalJson(bare)).toBe('{"y":[true],"z":1}');
  });

  class Decision {
    readonly allowed = true;
  }
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  const shared = { x: 1 };

  it.each<[string, unknown, RegExp]>([
    ['undefined at the top level', undefined, /\$: undefined/],
    ['undefined in an array', [1, undefined], /\$\[1\]: undefined/],
    ['a sparse array', [1, , 3], /\$\[1\]: undefined/], // eslint-disable-line no-sparse-arrays
    ['NaN', { a: NaN }, /\$\["a"\]: NaN is not a finite number/],
    ['Infinity', [Infinity], /Infinity is not a finite number/],
    ['-Infinity', { deep: { n: -Infinity } }, /\$\["deep"\]\["n"\]: -Infinity/],
    ['a bigint', { n: 1n }, /bigint/],
    ['a function', { f: () => 1 }, /function/],
    ['a symbol', [Symbol('s')], /symbol/],
    ['symbol keys', { [Symbol('k')]: 1 }, /symbol keys/],
    ['a Date', { at: new Date(0) }, /Date is not a plain object/],
    ['a Map', new Map(), /Map is not a plain object/],
    ['a Buffer', { bytes: Buffer.from('x') }, /Buffer is not a plain object/],
    ['a class instance', new Decision(), /Decision is not a plain object/],
    ['an unpaired surrogate', { s: 'a\ud800b' }, /unpaired UTF-16 surrogate/],
    ['an unpaired surrogate in a key', { '\udc00': 1 }, /key contains an unpaired/],
    ['a cycle', cyclic, /cyclic/],
  ])('rejects %s', (_what, value, reason) => {
    expect(() => canonicalJson(value)).toThrow(reason);
  });

  it('accepts the same object twice when it is not a cycle', () => {
    expect(canonicalJson({ a: shared, b: [shared] })).toBe('{"a":{"x":1},"b":[{"x":1}]}');
  });

  it('is a fixed point of JSON parsing and independent of member order', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const text = canonicalJson(value);
        expect(canonicalJson(JSON.parse(text))).toBe(text);
        if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
          const reversed = Object.fromEntries(Object.entries(value).reverse());
          expect(canonicalJson(reversed)).toBe(text);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('writes what the `canonicalize` package (the reference implementation in JavaScript) writes, on any JSON data', () => {
    for (const stringUnit of ['grapheme', 'grapheme-ascii'] as const) {
      fc.assert(
        fc.property(fc.jsonValue({ stringUnit, maxDepth: 6 }), (value) => {
          expect(canonicalJson(value)).toBe(referenceCanonicalize(value));
        }),
        { numRuns: 500 },
      );
    }
  });

  it('hashes an event as the RFC 6962 leaf of its canonical bytes', () => {
    const event = { type: 'dev.caracal.decision.v1', id: 'e1', data: { allowed: false } };
    expect(eventLeafHash(event)).toEqual(leafHash(Buffer.from('{"data":{"allowed":false},"id":"e1","type":"dev.caracal.decision.v1"}')));
  });
});
