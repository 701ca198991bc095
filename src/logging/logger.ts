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
