import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/**
 * pino JSON logs. Credentials never reach a log line: authorization headers, cookies and
 * upstream credential headers are redacted wherever they appear.
 */
export function createLogger(level: string, options: LoggerOptions = {}): Logger {
  return pino({
    level,
    base: { service: 'caracal' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: [
        'req.headers.authorization',
        'req.headers.cookie',
        'req.headers["proxy-authorization"]',
        'headers.authorization',
        'headers.cookie',
        'token',
        '*.token',
        'adminToken',
      ],
      censor: '[redacted]',
    },
    ...options,
  });
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;
const PARENT = Symbol('parent');
const BINDINGS = Symbol('bindings');
const REAL = Symbol('real');

interface LazyChild {
  [PARENT]: Logger;
  [BINDINGS]: Record<string, unknown>;
  [REAL]?: Logger;
}

function realChild(lazy: LazyChild): Logger {
  return (lazy[REAL] ??= lazy[PARENT].child(lazy[BINDINGS]));
}

/** One prototype per parent logger: the parent's own members, the writing ones made lazy. */
const lazyPrototypes = new WeakMap<Logger, object>();

function lazyPrototype(parent: Logger): object {
  let proto = lazyPrototypes.get(parent);
  if (proto) return proto;
  const members: PropertyDescriptorMap = {
    child: { value: function (this: LazyChild, ...args: Parameters<Logger['child']>) { return realChild(this).child(...args); } },
    bindings: { value: function (this: LazyChild) { return realChild(this).bindings(); } },
  };
  for (const level of LEVELS) {
    members[level] = {
      value: function (this: LazyChild & Logger, ...args: unknown[]) {
        // A line below the level costs a comparison, as with pino's own disabled methods.
        if (!this.isLevelEnabled(level)) return;
        (realChild(this)[level] as (...a: unknown[]) => void)(...args);
      },
    };
  }
  proto = Object.create(parent, members) as object;
  lazyPrototypes.set(parent, proto);
  return proto;
}

/**
 * Fastify's `childLoggerFactory` for a hot server: Fastify makes a child logger (bound to the
 * request id) for every request, and on a proxied request that logs nothing that is work for
 * nothing. This one makes the pino child when the request first writes a line at an enabled level;
 * until then reads (level, isLevelEnabled, …) go to the parent, which has the same settings.
 * Children with options of their own (a route's log level, serializers) are made at once.
 */
export function lazyChildLogger(logger: Logger, bindings: Record<string, unknown>, options: object | undefined): Logger {
  if (options && Object.keys(options).length > 0) return logger.child(bindings, options) as Logger;
  const lazy = Object.create(lazyPrototype(logger)) as LazyChild;
  lazy[PARENT] = logger;
  lazy[BINDINGS] = bindings;
  return lazy as unknown as Logger;
}
