/**
 * dashboard: looking at runs. metrics.jsonl -> chart points (`series.ts`, the one definition of
 * which curves exist) -> a live web page (`server.ts` + `page.ts`, uPlot over server-sent
 * events) or a file (`svg.ts`; PNG through headless Chromium, `png.ts`).
 *
 * @example
 * import { resolveRuns, startDashboard, renderSvg, readRuns } from "../dashboard/index.js";
 * const d = await startDashboard({ runs: resolveRuns(["runs/tiny"]) });
 * writeFileSync("curves.svg", renderSvg(readRuns(resolveRuns(["runs/tiny"], { requireMetrics: true }))));
 */
import { MetricsTail, type RunSource } from "./runs.js";
import type { RunRows } from "./svg.js";

export { CHARTS, rowsToPoints, parseMetricsLines, type ChartSpec, type SeriesSpec, type SeriesPoints, type Point, type RowKind } from "./series.js";
export { resolveRuns, watchRuns, MetricsTail, METRICS_FILE, type RunSource, type TailRead, type WatchOptions } from "./runs.js";
export { renderSvg, collectCharts, niceTicks, PALETTE, type RunRows, type ChartLines, type SvgOptions } from "./svg.js";
export { startDashboard, type Dashboard, type DashboardOptions } from "./server.js";
export { svgToPng } from "./png.js";
export { findChromium, launchChromium, CHROMIUM_PATHS, type HeadlessBrowser } from "./chromium.js";

/** Every complete row of each run's metrics.jsonl now. */
export function readRuns(runs: readonly RunSource[]): RunRows[] {
  return runs.map((r) => ({ name: r.name, rows: new MetricsTail(r.file).read().rows }));
}
