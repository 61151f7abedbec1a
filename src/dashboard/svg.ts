/**
 * The curves as a standalone SVG document, rendered in Node without a browser: a grid of
 * panels, one per chart of `CHARTS` that has data, each with axes, ticks, a legend and one
 * `<path class="series">` per (run, series) through every point.
 *
 * Written by hand rather than with a charting library: the browser libraries (uPlot, Chart.js)
 * draw on a canvas and need a DOM, and the Node SVG renderers pull in a DOM emulation for what
 * is here ~200 lines of arithmetic. The page uses uPlot for interaction; both draw the points
 * `rowsToPoints()` gives, so they show the same curves.
 */
import { CHARTS, rowsToPoints, type ChartSpec, type Point } from "./series.js";

/** One run's parsed metrics.jsonl rows. */
export interface RunRows {
  name: string;
  rows: ReadonlyArray<Record<string, unknown>>;
}

/** A chart with its curves from every run (only charts that have at least one point). */
export interface ChartLines {
  spec: ChartSpec;
  lines: Array<{ run: string; label: string; points: Point[] }>;
}

/** Colors by series index (Tableau 10), one dash pattern per run beyond the first. */
export const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
const DASHES = ["", "6 3", "2 2", "8 3 2 3"];

/**
 * Gathers every run's points per chart. Legends carry the run name when there are several runs.
 * @example collectCharts([{ name: "a", rows }]).map((c) => c.spec.id) // ["loss", "lr", ...]
 */
export function collectCharts(runs: readonly RunRows[]): ChartLines[] {
  const perRun = runs.map((r) => rowsToPoints(r.rows));
  const out: ChartLines[] = [];
  for (const spec of CHARTS) {
    const lines: ChartLines["lines"] = [];
    runs.forEach((run, r) => {
      for (const sp of perRun[r]!) {
        if (sp.chart !== spec.id) continue;
        const label = spec.series[sp.series]!.label;
        lines.push({ run: run.name, label: runs.length > 1 ? `${run.name}: ${label}` : label, points: sp.points });
      }
    });
    if (lines.length) out.push({ spec, lines });
  }
  return out;
}

/** About `count` round tick values covering [lo, hi] (1, 2, 5 x 10^k steps). */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return ticks;
}

/**
 * Ticks of a log axis spanning log10 values [lo, hi]: powers of ten over a wide range, powers
 * of two over a narrow one (a loss scale moving between 2^15 and 2^16), at most about 6.
 */
function logTicks(lo: number, hi: number): number[] {
  const base = hi - lo >= 3 ? 10 : 2;
  const a = Math.ceil(lo / Math.log10(base)), b = Math.floor(hi / Math.log10(base));
  const every = Math.max(1, Math.ceil((b - a + 1) / 6));
  const out: number[] = [];
  for (let e = a; e <= b; e += every) out.push(base ** e);
  return out;
}

/** Short tick text: 12k, 3e-4, 0.25. */
export function fmtTick(v: number): string {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  if (a < 1e-2) return v.toExponential(2).replace(/\.?0+e/, "e");
  return `${+v.toPrecision(3)}`;
}

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

/** Options of `renderSvg()`. */
export interface SvgOptions {
  /** Document width in px. Default 1200. */
  width?: number;
  /** Panels per row. Default 2. */
  columns?: number;
  /** Height of one panel in px. Default 280. */
  panelHeight?: number;
  /** Title above the panels. Default: the run names. */
  title?: string;
}

/**
 * Renders every chart with data as one SVG document.
 * @example writeFileSync("curves.svg", renderSvg([{ name: "tiny", rows }]));
 */
export function renderSvg(runs: readonly RunRows[], opts: SvgOptions = {}): string {
  const width = opts.width ?? 1200, columns = opts.columns ?? 2, panelH = opts.panelHeight ?? 280;
  const charts = collectCharts(runs);
  const header = 36;
  const panelW = width / columns;
  const rows = Math.max(1, Math.ceil(charts.length / columns));
  const height = header + rows * panelH;
  const title = opts.title ?? `megalith: ${runs.map((r) => r.name).join(", ")}`;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="12" y="24" font-size="15" font-weight="bold">${esc(title)}</text>`,
  ];
  if (!charts.length) parts.push(`<text x="12" y="${header + 20}">no metrics yet</text>`);
  const runIndex = new Map(runs.map((r, i) => [r.name, i]));
  charts.forEach((chart, c) => {
    const x0 = (c % columns) * panelW, y0 = header + Math.floor(c / columns) * panelH;
    parts.push(renderPanel(chart, x0, y0, panelW, panelH, runIndex));
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

function renderPanel(chart: ChartLines, x0: number, y0: number, w: number, h: number, runIndex: Map<string, number>): string {
  const { spec, lines } = chart;
  const logY = spec.logY === true && lines.every((l) => l.points.every(([, y]) => y > 0));
  const ty = (v: number): number => (logY ? Math.log10(v) : v);
  const all = lines.flatMap((l) => l.points);
  let xLo = Math.min(...all.map((p) => p[0])), xHi = Math.max(...all.map((p) => p[0]));
  let yLo = Math.min(...all.map((p) => ty(p[1]))), yHi = Math.max(...all.map((p) => ty(p[1])));
  if (xHi === xLo) { xLo -= 1; xHi += 1; }
  if (yHi === yLo) { const d = Math.abs(yLo) * 0.1 || 1; yLo -= d; yHi += d; }
  const pad = (yHi - yLo) * 0.05;
  yLo -= pad; yHi += pad;
  // Plot area inside the panel: room for y labels on the left, the legend at the bottom.
  const legendRows = Math.ceil(lines.length / 3);
  const L = x0 + 58, R = x0 + w - 14, T = y0 + 26, B = y0 + h - 30 - legendRows * 14;
  const sx = (v: number): number => L + ((v - xLo) / (xHi - xLo)) * (R - L);
  const sy = (v: number): number => B - ((ty(v) - yLo) / (yHi - yLo)) * (B - T);
  const out: string[] = [`<g class="chart" data-chart="${spec.id}">`];
  out.push(`<text x="${x0 + 12}" y="${y0 + 16}" font-size="12" font-weight="bold">${esc(spec.title)}${spec.unit ? ` (${esc(spec.unit)})` : ""}</text>`);
  out.push(`<rect x="${L}" y="${T}" width="${(R - L).toFixed(1)}" height="${(B - T).toFixed(1)}" fill="none" stroke="#ccc"/>`);
  for (const t of niceTicks(xLo, xHi)) {
    const x = sx(t).toFixed(1);
    out.push(`<line x1="${x}" y1="${B}" x2="${x}" y2="${B + 4}" stroke="#888"/><text x="${x}" y="${B + 15}" text-anchor="middle" fill="#555">${fmtTick(t)}</text>`);
  }
  const yTicks = logY ? logTicks(yLo, yHi) : niceTicks(yLo, yHi);
  for (const t of yTicks) {
    const y = sy(t).toFixed(1);
    out.push(`<line x1="${L}" y1="${y}" x2="${R}" y2="${y}" stroke="#eee"/><text x="${L - 4}" y="${y}" dy="3" text-anchor="end" fill="#555">${fmtTick(t)}</text>`);
  }
  out.push(`<text x="${((L + R) / 2).toFixed(1)}" y="${B + 27}" text-anchor="middle" fill="#555">step</text>`);
  lines.forEach((line, i) => {
    const color = PALETTE[seriesIndex(spec, line.label) % PALETTE.length]!;
    const dash = DASHES[(runIndex.get(line.run) ?? 0) % DASHES.length]!;
    const d = line.points.map(([x, y], k) => `${k ? "L" : "M"}${sx(x).toFixed(2)} ${sy(y).toFixed(2)}`).join(" ") +
      (line.points.length === 1 ? " h0" : ""); // a zero-length segment, so a lone point shows as a dot
    out.push(`<path class="series" data-run="${esc(line.run)}" data-label="${esc(line.label)}" data-points="${line.points.length}" d="${d}" fill="none" stroke="${color}" stroke-width="1.5"${dash ? ` stroke-dasharray="${dash}"` : ""}${line.points.length === 1 ? ` stroke-linecap="round" stroke-width="5"` : ""}/>`);
    const lx = x0 + 58 + (i % 3) * ((w - 72) / 3), ly = y0 + h - 8 - (legendRows - 1 - Math.floor(i / 3)) * 14;
    out.push(`<line x1="${lx.toFixed(1)}" y1="${ly - 4}" x2="${(lx + 16).toFixed(1)}" y2="${ly - 4}" stroke="${color}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ""}/><text x="${(lx + 20).toFixed(1)}" y="${ly}">${esc(line.label)}</text>`);
  });
  out.push("</g>");
  return out.join("\n");
}

/** The series' index within its chart (its color), from the legend label's suffix. */
function seriesIndex(spec: ChartSpec, label: string): number {
  const i = spec.series.findIndex((s) => label === s.label || label.endsWith(`: ${s.label}`));
  return Math.max(0, i);
}
