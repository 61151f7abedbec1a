/**
 * metrics.jsonl -> chart points: the one place that decides which curves exist and which rows
 * feed them. The live dashboard (server.ts pushes these points to the page) and `megalith plot`
 * (svg.ts) both draw exactly what this file returns, so the page and the file show the same
 * curves.
 *
 * A metrics.jsonl line is a train step (`{step, loss, lr, ...}`), an eval (`{step, split: "val",
 * loss, val_bpb?}`) or a skipped step (`{step, skipped: true, ...}`; it carries loss_scale under
 * fp16, which is plotted, and nothing else is).
 */

/** Which rows a series reads: train steps, or `split: "val"` eval rows. */
export type RowKind = "train" | "val";

/** One curve of a chart: a numeric field of one kind of row. */
export interface SeriesSpec {
  /** The metrics.jsonl field plotted on the y axis (x is always `step`). */
  key: string;
  kind: RowKind;
  /** Legend text (the run name is prepended when several runs are shown). */
  label: string;
}

/** One chart: a title, a y-axis unit and its curves. */
export interface ChartSpec {
  id: string;
  title: string;
  /** Shown beside the y axis; "" for plain numbers. */
  unit: string;
  /** Log-scale y axis (loss scale spans powers of two). */
  logY?: boolean;
  series: SeriesSpec[];
}

/** The charts, in the order the page and the plot show them. Plain data: add a chart here. */
export const CHARTS: readonly ChartSpec[] = [
  { id: "loss", title: "loss", unit: "nats/token", series: [
    { key: "loss", kind: "train", label: "train loss" },
    { key: "loss", kind: "val", label: "val loss" },
  ] },
  { id: "val_bpb", title: "validation bits per byte", unit: "bits/byte", series: [{ key: "val_bpb", kind: "val", label: "val bpb" }] },
  { id: "lr", title: "learning rate", unit: "", series: [{ key: "lr", kind: "train", label: "lr" }] },
  { id: "tokens_per_s", title: "throughput", unit: "tokens/s", series: [{ key: "tokens_per_s", kind: "train", label: "tokens/s" }] },
  { id: "mfu", title: "model FLOP utilization", unit: "fraction of peak", series: [{ key: "mfu", kind: "train", label: "MFU" }] },
  { id: "memory", title: "memory by category", unit: "MiB", series: [
    { key: "mem_params_mb", kind: "train", label: "params" },
    { key: "mem_grads_mb", kind: "train", label: "grads" },
    { key: "mem_optimizer_mb", kind: "train", label: "optimizer" },
    { key: "mem_act_peak_mb", kind: "train", label: "activations (peak)" },
    { key: "mem_peak_mb", kind: "train", label: "total (peak)" },
  ] },
  { id: "loss_scale", title: "fp16 loss scale", unit: "", logY: true, series: [{ key: "loss_scale", kind: "train", label: "loss scale" }] },
  { id: "grad_norm", title: "gradient norm", unit: "", series: [{ key: "grad_norm", kind: "train", label: "grad norm" }] },
];

/** A point: [step, value]. */
export type Point = [number, number];

/** Points of one run for one series of one chart. */
export interface SeriesPoints {
  chart: string;
  /** Index into the chart's `series`. */
  series: number;
  points: Point[];
}

/** The kind of a parsed metrics row, or null for rows no series reads. */
function rowKind(row: Record<string, unknown>): RowKind | null {
  if (typeof row.step !== "number" || !Number.isFinite(row.step)) return null;
  if (row.split === "val") return "val";
  if (row.split === undefined) return "train";
  return null;
}

/**
 * The points a batch of rows adds to each series (series with no new points are left out).
 * Non-finite values (a NaN loss) are not points: a chart cannot place them.
 * @example
 * rowsToPoints([{ step: 0, loss: 10.9, lr: 1e-3 }]);
 * // [{ chart: "loss", series: 0, points: [[0, 10.9]] }, { chart: "lr", series: 0, points: [[0, 0.001]] }]
 */
export function rowsToPoints(rows: ReadonlyArray<Record<string, unknown>>): SeriesPoints[] {
  const out: SeriesPoints[] = [];
  for (const chart of CHARTS) {
    chart.series.forEach((s, i) => {
      const points: Point[] = [];
      for (const row of rows) {
        const v = row[s.key];
        // Skipped steps are train-kind rows that carry only loss_scale (fp16 overflow backoff).
        if (rowKind(row) === s.kind && typeof v === "number" && Number.isFinite(v) && (row.skipped !== true || s.key === "loss_scale")) {
          points.push([row.step as number, v]);
        }
      }
      if (points.length) out.push({ chart: chart.id, series: i, points });
    });
  }
  return out;
}

/**
 * Parses complete metrics.jsonl lines. A line that is not a JSON object (a torn write from a
 * crashed run) is skipped rather than failing the whole view; `bad` counts them.
 */
export function parseMetricsLines(text: string): { rows: Record<string, unknown>[]; bad: number } {
  const rows: Record<string, unknown>[] = [];
  let bad = 0;
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      const v = JSON.parse(line) as unknown;
      if (typeof v === "object" && v !== null && !Array.isArray(v)) rows.push(v as Record<string, unknown>);
      else bad++;
    } catch {
      bad++;
    }
  }
  return { rows, bad };
}
