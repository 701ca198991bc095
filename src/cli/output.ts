/** Human tables by default, JSON for machines. */
export interface Output {
  line(text: string): void;
  json(value: unknown): void;
  table(rows: Record<string, unknown>[], columns: { key: string; header: string }[]): void;
}

function cell(value: unknown): string {
  if (value === null || value === undefined) return '-';
  if (Array.isArray(value)) return value.join(' ');
  if (typeof value === 'object') return JSON.stringify(value);
  // eslint-disable-next-line no-control-regex -- matching control characters is the point: they are blanked out of table cells
  return String(value).replace(/[\u0000-\u001f\u007f]/g, ' ');
}

export function createOutput(write: (text: string) => void = (text) => process.stdout.write(text)): Output {
  return {
    line: (text) => write(`${text}\n`),
    json: (value) => write(`${JSON.stringify(value, null, 2)}\n`),
    table: (rows, columns) => {
      if (rows.length === 0) {
        write('(none)\n');
        return;
      }
      const cells = rows.map((row) => columns.map((c) => cell(row[c.key])));
      const widths = columns.map((c, i) => Math.max(c.header.length, ...cells.map((r) => r[i]!.length)));
      const render = (values: string[]) => values.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
      write(`${render(columns.map((c) => c.header))}\n`);
      for (const row of cells) write(`${render(row)}\n`);
    },
  };
}

/** A record shown as `key: value` lines. */
export function printRecord(out: Output, record: Record<string, unknown>): void {
  const width = Math.max(...Object.keys(record).map((k) => k.length));
  for (const [key, value] of Object.entries(record)) out.line(`${key.padEnd(width)}  ${cell(value)}`);
}
