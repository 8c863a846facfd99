/**
 * A line chart as a standalone SVG (no dependency, no script): series of
 * (x, y) points, optional log scales, axis ticks, a legend. Enough for the
 * benchmark report's charts; not a plotting library.
 */
export interface Series { name: string; points: Array<[number, number]> }
export interface ChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  logX?: boolean;
  logY?: boolean;
  series: Series[];
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#17becf'];
const W = 720, H = 420, L = 80, R = 200, T = 40, B = 60;

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function ticks(lo: number, hi: number, log: boolean): number[] {
  if (log) {
    const out: number[] = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) out.push(10 ** e);
    return out;
  }
  const step = 10 ** Math.floor(Math.log10((hi - lo) / 4 || 1));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => (hi - lo) / s <= 6) ?? step * 10;
  const out: number[] = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + 1e-9; v += nice) out.push(v);
  return out;
}

function label(v: number): string {
  if (v >= 1e9) return `${v / 1e9}G`;
  if (v >= 1e6) return `${v / 1e6}M`;
  if (v >= 1e3) return `${v / 1e3}k`;
  return String(Number(v.toPrecision(3)));
}

export function lineChart(spec: ChartSpec): string {
  const pts = spec.series.flatMap((s) => s.points).filter(([x, y]) => (!spec.logX || x > 0) && (!spec.logY || y > 0));
  if (pts.length === 0) return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}"><text x="20" y="40">${esc(spec.title)}: no data</text></svg>\n`;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (spec.logX) { x0 = 10 ** Math.floor(Math.log10(x0)); x1 = 10 ** Math.ceil(Math.log10(x1)); if (x0 === x1) { x0 /= 10; x1 *= 10; } } else if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (spec.logY) { y0 = 10 ** Math.floor(Math.log10(y0)); y1 = 10 ** Math.ceil(Math.log10(y1)); if (y0 === y1) { y0 /= 10; y1 *= 10; } } else { y0 = 0; y1 = y1 > 0 ? y1 * 1.1 : 1; }
  const fx = (x: number) => L + ((spec.logX ? Math.log10(x) - Math.log10(x0) : x - x0) / (spec.logX ? Math.log10(x1) - Math.log10(x0) : x1 - x0)) * (W - L - R);
  const fy = (y: number) => H - B - ((spec.logY ? Math.log10(y) - Math.log10(y0) : y - y0) / (spec.logY ? Math.log10(y1) - Math.log10(y0) : y1 - y0)) * (H - T - B);
  const out: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${esc(spec.title)}</text>`];
  for (const v of ticks(x0, x1, !!spec.logX)) {
    out.push(`<line x1="${fx(v)}" y1="${T}" x2="${fx(v)}" y2="${H - B}" stroke="#eee"/>`, `<text x="${fx(v)}" y="${H - B + 16}" text-anchor="middle">${label(v)}</text>`);
  }
  for (const v of ticks(y0, y1, !!spec.logY)) {
    out.push(`<line x1="${L}" y1="${fy(v)}" x2="${W - R}" y2="${fy(v)}" stroke="#eee"/>`, `<text x="${L - 6}" y="${fy(v) + 4}" text-anchor="end">${label(v)}</text>`);
  }
  out.push(`<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#444"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 18}" text-anchor="middle">${esc(spec.xLabel)}</text>`,
    `<text x="18" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 18 ${(T + H - B) / 2})">${esc(spec.yLabel)}</text>`);
  spec.series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const p = s.points.filter(([x, y]) => (!spec.logX || x > 0) && (!spec.logY || y > 0)).sort((a, b) => a[0] - b[0]);
    if (p.length > 1) out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${p.map(([x, y]) => `${fx(x).toFixed(1)},${fy(y).toFixed(1)}`).join(' ')}"/>`);
    for (const [x, y] of p) out.push(`<circle cx="${fx(x).toFixed(1)}" cy="${fy(y).toFixed(1)}" r="3.5" fill="${c}"/>`);
    out.push(`<rect x="${W - R + 14}" y="${T + 8 + i * 20}" width="12" height="12" fill="${c}"/>`, `<text x="${W - R + 32}" y="${T + 18 + i * 20}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
