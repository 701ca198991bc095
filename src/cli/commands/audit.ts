import type { Command } from 'commander';
import type { AuditRecord } from '../../audit/audit-store.js';
import { timeArg } from '../parse.js';
import type { CliRuntime } from '../runtime.js';

const AUDIT_COLUMNS = [
  { key: 'occurredAt', header: 'TIME' },
  { key: 'eventType', header: 'TYPE' },
  { key: 'subject', header: 'PRINCIPAL' },
  { key: 'summary', header: 'WHAT' },
  { key: 'decisionId', header: 'DECISION' },
  { key: 'requestId', header: 'REQUEST' },
];

/** One line of what an audit record says, for tables. */
function summary(record: AuditRecord): string {
  const data = (record.data ?? {}) as Record<string, unknown>;
  if (typeof data.allow === 'boolean') {
    const reasons = Array.isArray(data.reasons) && data.reasons.length > 0 ? ` (${data.reasons.join(', ')})` : '';
    return `${data.allow ? 'allow' : 'deny'} ${String(data.status ?? '')} ${String(data.method ?? '')} ${String(data.upstream ?? '')}${reasons}`;
  }
  if (typeof data.entity === 'string') return `${data.entity} ${String(data.action ?? '')}`;
  if (record.actor) return `${record.actor} from ${record.origin ?? '?'}`;
  return record.topic ?? '';
}

function print(runtime: CliRuntime, records: AuditRecord[], json: boolean | undefined): void {
  if (json) return runtime.out.json(records);
  runtime.out.table(records.map((r) => ({ ...r, summary: summary(r) })) as unknown as Record<string, unknown>[], AUDIT_COLUMNS);
  runtime.out.line(`${records.length} record${records.length === 1 ? '' : 's'}`);
}

export function registerAuditCommands(program: Command, rt: () => CliRuntime): void {
  program
    .command('audit')
    .description('the append-only audit log (every event of every topic)')
    .command('query')
    .description('audit records in a time range')
    .option('--agent-id <id>', 'only this principal')
    .requiredOption('--start-time <time>', 'ISO 8601 (UTC unless an offset is given), a date, "now" or "-24h"')
    .option('--end-time <time>', 'same forms; default now', 'now')
    .option('--decision-id <id>', 'only this decision')
    .option('--request-id <id>', 'only this request')
    .option('--limit <n>', 'at most this many', '1000')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const start = timeArg('--start-time', options.startTime);
      const end = timeArg('--end-time', options.endTime);
      const runtime = rt();
      const records = await runtime.operation<AuditRecord[]>('audit.query', {
        start: start.toISOString(),
        end: end.toISOString(),
        limit: options.limit,
        ...(options.agentId ? { principalId: options.agentId } : {}),
        ...(options.decisionId ? { decisionId: options.decisionId } : {}),
        ...(options.requestId ? { requestId: options.requestId } : {}),
      });
      print(runtime, records, options.json);
    });

  program
    .command('trace')
    .description('everything recorded for one request (decisions, metering, …), oldest first')
    .requiredOption('--request-id <id>', 'the x-request-id the gateway returned')
    .option('--since <time>', 'how far back to look', '-30d')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const start = timeArg('--since', options.since);
      const runtime = rt();
      const records = await runtime.operation<AuditRecord[]>('audit.query', { start: start.toISOString(), end: new Date(Date.now() + 60_000).toISOString(), requestId: options.requestId, limit: 10_000 });
      print(runtime, records, options.json);
    });
}
