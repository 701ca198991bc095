import type { GatewayMetrics } from '../metrics/metrics.js';

interface Observer {
  observe(value: number): void;
}

interface ResponseSeries {
  labels: { route: string; method: string; status: string; upstream: string };
  duration: Observer;
}

/** More distinct series than any real configuration has: past it, labels are built per call again. */
const MAX_CACHED = 10_000;

/**
 * The gateway's per-request metric updates, with each label set built once. prom-client takes a
 * fresh labels object per call and builds a closure and a wrapper object for every histogram
 * observation; a labelled child is made once per series here and reused. The series are as bounded
 * as the labels themselves (route templates, methods, status codes, configured upstreams, engine
 * outcomes), and the cache stops growing at MAX_CACHED whatever happens.
 */
export class MetricSeries {
  private readonly responses = new Map<string, ResponseSeries>();
  private readonly evaluations = new Map<string, { outcome: string; allow: string }>();
  private readonly evalDuration: Observer;

  constructor(private readonly metrics: GatewayMetrics) {
    this.evalDuration = metrics.policyEvalDuration.labels();
  }

  /** One answered request: `caracal_gateway_requests_total` and its duration. */
  response(route: string, method: string, status: number, upstream: string, seconds: number): void {
    const key = `${route} ${method} ${status} ${upstream}`;
    let series = this.responses.get(key);
    if (series === undefined) {
      series = { labels: { route, method, status: String(status), upstream }, duration: this.metrics.duration.labels(route, upstream) };
      if (this.responses.size < MAX_CACHED) this.responses.set(key, series);
    }
    this.metrics.requests.inc(series.labels);
    series.duration.observe(seconds);
  }

  /** One policy evaluation: its duration and its outcome. */
  evaluation(seconds: number, outcome: string, allow: boolean): void {
    this.evalDuration.observe(seconds);
    const key = allow ? `${outcome} true` : `${outcome} false`;
    let labels = this.evaluations.get(key);
    if (labels === undefined) {
      labels = { outcome, allow: String(allow) };
      if (this.evaluations.size < MAX_CACHED) this.evaluations.set(key, labels);
    }
    this.metrics.policyEvaluations.inc(labels);
  }
}
