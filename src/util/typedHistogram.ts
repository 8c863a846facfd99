/**
 * A histogram in typed arrays, for the hot loop: observe() is a few compares
 * and two additions, no allocation. It knows nothing of Prometheus: the
 * metrics code reads it when scraped (metrics/histogram.ts promHistogram
 * turns it into a metric in the Prometheus histogram format), so the data
 * plane that fills it imports no metrics code.
 *
 * counts[i] holds observations <= bounds[i] and > bounds[i - 1]; the last
 * slot holds those above every bound (+Inf). Cumulated at scrape time.
 */
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

