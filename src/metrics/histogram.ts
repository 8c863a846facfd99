/**
 * A histogram in typed arrays, for the hot loop: observe() is a few compares
 * and two additions, no allocation; prom-client reads it only when scraped
 * (promHistogram turns it into a metric in the Prometheus histogram format).
 *
 * counts[i] holds observations <= bounds[i] and > bounds[i - 1]; the last
 * slot holds those above every bound (+Inf). Cumulated at scrape time.
 */
import type { Registry } from 'prom-client';

export class TypedHistogram {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(readonly bounds: Float64Array) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(v: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]) i++;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }
}

/** Register `h` in `registry` as a Prometheus histogram called `name`. */
export function promHistogram(registry: Registry, name: string, help: string, h: TypedHistogram): void {
  registry.registerMetric({
    name,
    help,
    type: 'histogram',
    async get() {
      const values: Array<{ metricName: string; labels: Record<string, string | number>; value: number }> = [];
      let cumulative = 0;
      for (let i = 0; i < h.bounds.length; i++) {
        cumulative += h.counts[i];
        values.push({ metricName: `${name}_bucket`, labels: { le: h.bounds[i] }, value: cumulative });
      }
      values.push({ metricName: `${name}_bucket`, labels: { le: '+Inf' }, value: cumulative + h.counts[h.bounds.length] });
      values.push({ metricName: `${name}_sum`, labels: {}, value: h.sum });
      values.push({ metricName: `${name}_count`, labels: {}, value: h.count });
      return { name, help, type: 'histogram', values, aggregator: 'sum' };
    },
  } as unknown as Parameters<Registry['registerMetric']>[0]);
}
