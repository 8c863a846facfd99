/**
 * A TypedHistogram (util/typedHistogram.ts) as a Prometheus histogram,
 * cumulated at scrape time.
 */
import type { Registry } from 'prom-client';
import type { TypedHistogram } from '../util/typedHistogram.js';

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
