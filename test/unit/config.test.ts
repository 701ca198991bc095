import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { backendsOf, loadConfig } from '../../src/config/load.js';
import { CaracalError } from '../../src/errors/catalog.js';

function yamlFile(text: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'caracal-config-'));
  const file = path.join(dir, 'caracal.yaml');
  writeFileSync(file, text);
  return file;
}

function problemOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CaracalError);
    expect((err as CaracalError).code).toBe('CARACAL_CONFIG_INVALID');
    return (err as Error).message;
  }
  throw new Error('expected a config error');
}

describe('config', () => {
  it('with no env and no file selects the embedded default for every port', () => {
    const config = loadConfig({ env: {}, cwd: tmpdir() });
    expect(backendsOf(config)).toEqual({ db: 'pglite', events: 'local', cache: 'memory' });
    expect(config.gateway.port).toBe(8443);
    expect(path.isAbsolute(config.home)).toBe(true);
    expect(Object.isFrozen(config.gateway)).toBe(true);
  });

  it('env selects PostgreSQL, Kafka and Redis', () => {
    const config = loadConfig({
      env: { DATABASE_URL: 'postgres://u@127.0.0.1:5432/db', KAFKA_BROKERS: '127.0.0.1:9092, 127.0.0.1:9093', REDIS_URL: 'redis://127.0.0.1:6379' },
      cwd: tmpdir(),
    });
    expect(backendsOf(config)).toEqual({ db: 'postgres', events: 'kafka', cache: 'redis' });
    expect(config.kafka.brokers).toEqual(['127.0.0.1:9092', '127.0.0.1:9093']);
  });

  it('names the key and its source for a bad env value', () => {
    expect(problemOf(() => loadConfig({ env: { CARACAL_GATEWAY_PORT: 'eighty' }, cwd: tmpdir() }))).toMatch(/gateway\.port: .*\(from env CARACAL_GATEWAY_PORT\)/);
    expect(problemOf(() => loadConfig({ env: { DATABASE_URL: 'mysql://x' }, cwd: tmpdir() }))).toMatch(/database\.url: must be a postgres:\/\/ URL/);
  });

  it('reports every bad key at once', () => {
    const message = problemOf(() => loadConfig({ env: { CARACAL_GATEWAY_PORT: '-1', CARACAL_LOG_LEVEL: 'loud' }, cwd: tmpdir() }));
    expect(message).toContain('gateway.port');
    expect(message).toContain('logLevel');
  });

  it('rejects malformed YAML with one line naming the file', () => {
    const file = yamlFile('gateway:\n  port: [1, 2\n');
    const message = problemOf(() => loadConfig({ env: {}, configPath: file }));
    expect(message).toContain(file);
    expect(message).toMatch(/not valid YAML/);
    expect(message).not.toContain('\n');
  });

  it('rejects a YAML document that is not a mapping, and unknown or renamed keys', () => {
    expect(problemOf(() => loadConfig({ env: {}, configPath: yamlFile('- a\n- b\n') }))).toMatch(/must be a mapping/);
    expect(problemOf(() => loadConfig({ env: {}, configPath: yamlFile('gateway:\n  prot: 1\n') }))).toMatch(/gateway\.prot: unknown key/);
    expect(problemOf(() => loadConfig({ env: {}, configPath: yamlFile('database:\n  pool_size: 50\n') }))).toMatch(/database\.pool_size: unknown key \(renamed: use database\.poolSize\)/);
  });

  it('rejects a YAML alias bomb instead of expanding it', () => {
    const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]', ...Array.from({ length: 8 }, (_, i) => `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)}]`)].join('\n');
    expect(problemOf(() => loadConfig({ env: {}, configPath: yamlFile(bomb) }))).toMatch(/not valid YAML|alias/i);
  });

  it('validates upstreams: names, URLs, and credentials by env name only', () => {
    const good = loadConfig({ env: {}, configPath: yamlFile('gateway:\n  upstreams:\n    - name: openai\n      url: https://api.openai.com/v1\n      credentials: {header: authorization, valueEnv: OPENAI_API_KEY, prefix: "Bearer "}\n') });
    expect(good.gateway.upstreams[0]).toMatchObject({ name: 'openai', credentials: { valueEnv: 'OPENAI_API_KEY' } });
    expect(problemOf(() => loadConfig({ env: {}, configPath: yamlFile('gateway:\n  upstreams:\n    - name: "../x"\n      url: ftp://x\n') }))).toMatch(/gateway\.upstreams\.0\.name.*gateway\.upstreams\.0\.url/s);
    expect(problemOf(() => loadConfig({ env: {}, configPath: yamlFile('gateway:\n  upstreams:\n    - name: a\n      url: http://x\n      credentials: {header: x-api-key, value: sk-123}\n') }))).toMatch(/credentials.*(valueEnv|unknown key)/);
  });

  it('records MCP argument values only where asked, and only for MCP upstreams', () => {
    const mcp = loadConfig({ env: {}, configPath: yamlFile('gateway:\n  upstreams:\n    - name: code\n      url: http://127.0.0.1:9/mcp\n      dialect: mcp\n      recordArguments: true\n    - name: quiet\n      url: http://127.0.0.1:9/mcp\n      dialect: mcp\n') });
    expect(mcp.gateway.upstreams.map((u) => u.recordArguments)).toEqual([true, false]);
    expect(problemOf(() => loadConfig({ env: {}, configPath: yamlFile('gateway:\n  upstreams:\n    - name: api\n      url: http://x\n      recordArguments: true\n') }))).toMatch(/gateway\.upstreams\.0\.recordArguments.*only for upstreams of dialect mcp/s);
    expect(problemOf(() => loadConfig({ env: {}, configPath: yamlFile('gateway:\n  upstreams:\n    - name: code\n      url: http://x\n      dialect: mcp\n      recordArguments: "yes"\n') }))).toMatch(/gateway\.upstreams\.0\.recordArguments/);
  });

  it('has ledger defaults and reads the ledger keys from the environment', () => {
    const defaults = loadConfig({ env: {}, cwd: tmpdir() });
    expect(defaults.ledger).toEqual({ origin: 'caracal.local/ledger', batchMaxEvents: 1000, batchMaxMs: 1000, freezeOnVerificationFailure: true, serveTiles: false });
    const config = loadConfig({
      env: {
        CARACAL_LEDGER_ORIGIN: 'ledger.example.com/prod',
        CARACAL_LEDGER_SIGNING_KEY: '/run/secrets/ledger.pem',
        CARACAL_LEDGER_BATCH_MAX_EVENTS: '500',
        CARACAL_LEDGER_BATCH_MAX_MS: '250',
        CARACAL_LEDGER_FREEZE_ON_VERIFICATION_FAILURE: 'false',
        CARACAL_LEDGER_SERVE_TILES: 'true',
      },
      cwd: tmpdir(),
    });
    expect(config.ledger).toEqual({ origin: 'ledger.example.com/prod', signingKeyPath: '/run/secrets/ledger.pem', batchMaxEvents: 500, batchMaxMs: 250, freezeOnVerificationFailure: false, serveTiles: true });
  });

  it('refuses a ledger origin that cannot be a checkpoint origin and key name, and batch bounds out of range', () => {
    for (const origin of ['', 'two words', 'line\nbreak', 'tab\there', 'a+b', 'nbsp\u00a0here', 'lone\ud800surrogate', 'x'.repeat(256)]) {
      expect(problemOf(() => loadConfig({ env: {}, cwd: tmpdir(), overrides: { ledger: { origin } } })), JSON.stringify(origin)).toMatch(/ledger\.origin/);
    }
    expect(problemOf(() => loadConfig({ env: { CARACAL_LEDGER_BATCH_MAX_EVENTS: '0' }, cwd: tmpdir() }))).toMatch(/ledger\.batchMaxEvents: .*\(from env CARACAL_LEDGER_BATCH_MAX_EVENTS\)/);
    expect(problemOf(() => loadConfig({ env: { CARACAL_LEDGER_BATCH_MAX_MS: '1' }, cwd: tmpdir() }))).toMatch(/ledger\.batchMaxMs/);
    expect(problemOf(() => loadConfig({ env: {}, configPath: yamlFile('ledger:\n  batchSize: 5\n') }))).toMatch(/ledger\.batchSize: unknown key/);
  });

  it('fails clearly when an explicit config file is missing', () => {
    expect(problemOf(() => loadConfig({ env: { CARACAL_CONFIG: '/nonexistent/caracal.yaml' } }))).toMatch(/cannot be read \(ENOENT\)/);
  });
});
