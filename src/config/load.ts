import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { CaracalError } from '../errors/catalog.js';
import { ConfigSchema, ENV_KEYS, RENAMED_KEYS, type CaracalConfig } from './schema.js';

export interface LoadConfigOptions {
  env?: NodeJS.ProcessEnv;
  /** Explicit YAML path; otherwise CARACAL_CONFIG, otherwise ./caracal.yaml when it exists. */
  configPath?: string;
  /** Values applied last (tests, CLI flags). */
  overrides?: Record<string, unknown>;
  cwd?: string;
}

type Tree = Record<string, unknown>;

function setPath(target: Tree, keys: string[], value: unknown): void {
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Tree;
  }
  node[keys[keys.length - 1]!] = value;
}

function deepMerge(base: Tree, extra: Tree): Tree {
  const out: Tree = { ...base };
  for (const [key, value] of Object.entries(extra)) {
    const prev = out[key];
    out[key] =
      value && typeof value === 'object' && !Array.isArray(value) && prev && typeof prev === 'object' && !Array.isArray(prev)
        ? deepMerge(prev as Tree, value as Tree)
        : value;
  }
  return out;
}

function readYaml(file: string): Tree {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `config file ${file}: cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text, { maxAliasCount: 100 });
  } catch (err) {
    const first = String((err as Error).message).split('\n')[0];
    throw new CaracalError('CARACAL_CONFIG_INVALID', `config file ${file}: not valid YAML: ${first}`);
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `config file ${file}: the top level must be a mapping of keys`);
  }
  return parsed as Tree;
}

function flattenKeys(tree: Tree, prefix = ''): string[] {
  return Object.entries(tree).flatMap(([key, value]) => {
    const full = prefix ? `${prefix}.${key}` : key;
    return value && typeof value === 'object' && !Array.isArray(value) ? [full, ...flattenKeys(value as Tree, full)] : [full];
  });
}

function describeIssue(issue: z.core.$ZodIssue, sources: Map<string, string>): string[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => {
      const full = [...issue.path, key].join('.');
      const renamed = RENAMED_KEYS[full];
      return renamed ? `${full}: unknown key (renamed: use ${renamed})` : `${full}: unknown key`;
    });
  }
  const key = issue.path.join('.') || '(root)';
  const source = sources.get(key);
  return [`${key}: ${issue.message}${source ? ` (from ${source})` : ''}`];
}

/**
 * Build the one typed, frozen config object: defaults ← YAML file ← environment ← overrides.
 * Every problem is reported at once, each naming its key.
 */
export function loadConfig(options: LoadConfigOptions = {}): Readonly<CaracalConfig> {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const sources = new Map<string, string>();

  let tree: Tree = {};
  const explicit = options.configPath ?? env.CARACAL_CONFIG;
  const yamlPath = explicit ? path.resolve(cwd, explicit) : path.resolve(cwd, 'caracal.yaml');
  if (explicit || existsSync(yamlPath)) {
    tree = readYaml(yamlPath);
    for (const key of flattenKeys(tree)) sources.set(key, path.basename(yamlPath));
  }

  for (const [name, spec] of Object.entries(ENV_KEYS)) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    const value = spec.list ? raw.split(',').map((s) => s.trim()).filter(Boolean) : raw;
    setPath(tree, spec.path, value);
    sources.set(spec.path.join('.'), `env ${name}`);
  }
  if (options.overrides) tree = deepMerge(tree, options.overrides);

  const result = ConfigSchema.safeParse(tree);
  if (!result.success) {
    const problems = result.error.issues.flatMap((issue) => describeIssue(issue, sources));
    throw new CaracalError('CARACAL_CONFIG_INVALID', `invalid configuration: ${problems.join('; ')}`, { reasons: problems });
  }
  const config = result.data;
  config.home = path.resolve(cwd, config.home);
  return deepFreeze(config);
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}

/** Which implementation of each port the config selects. */
export function backendsOf(config: CaracalConfig): { db: 'postgres' | 'pglite'; events: 'kafka' | 'local'; cache: 'redis' | 'memory' } {
  return {
    db: config.database.url ? 'postgres' : 'pglite',
    events: config.kafka.brokers ? 'kafka' : 'local',
    cache: config.redis.url ? 'redis' : 'memory',
  };
}
