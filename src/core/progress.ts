/**
 * Progress reporting for long jobs (data preparation, training, benchmarks).
 *
 * On a TTY the line is redrawn in place; otherwise (CI, pipes) a full line is printed at most
 * every `intervalMs`, so logs stay readable. Every line carries throughput, ETA and memory.
 */

export interface ProgressOptions {
  /** Total units of work (bytes, steps...). Unknown totals omit percentage and ETA. */
  total?: number;
  /** Unit label shown with the throughput, e.g. "MB", "tok", "step". Default "it". */
  unit?: string;
  /** Divide raw counts by this before display (e.g. 1e6 for MB). Default 1. */
  unitScale?: number;
  /** Minimum time between non-TTY lines, in ms. Default 2000. */
  intervalMs?: number;
  /** Stream to write to. Default process.stderr. */
  stream?: NodeJS.WriteStream;
  /** Extra text appended to each line (e.g. the current loss). */
  suffix?: () => string;
}

function fmtDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(sec).padStart(2, "0")}s`;
}

/** Resident set size in MiB, the memory figure every progress line shows. */
export function rssMiB(): number {
  return process.memoryUsage.rss() / (1 << 20);
}

/**
 * A progress bar / periodic progress line.
 * @example
 * const p = new Progress("prepare", { total: bytes, unit: "MB", unitScale: 1e6 });
 * p.tick(chunk.length); ... p.done();
 */
export class Progress {
  private readonly label: string;
  private readonly opts: Required<Omit<ProgressOptions, "total" | "suffix">> & Pick<ProgressOptions, "total" | "suffix">;
  private count = 0;
  private readonly start = performance.now();
  private lastDraw = 0;
  private readonly tty: boolean;

  constructor(label: string, options: ProgressOptions = {}) {
    this.label = label;
    this.opts = {
      total: options.total,
      unit: options.unit ?? "it",
      unitScale: options.unitScale ?? 1,
      intervalMs: options.intervalMs ?? 2000,
      stream: options.stream ?? process.stderr,
      suffix: options.suffix,
    };
    this.tty = Boolean(this.opts.stream.isTTY) && !process.env.CI;
  }

  /** Adds `n` units of completed work and redraws when due. */
  tick(n = 1): void {
    this.count += n;
    const now = performance.now();
    const every = this.tty ? 100 : this.opts.intervalMs;
    if (now - this.lastDraw >= every) {
      this.lastDraw = now;
      this.draw(false);
    }
  }

  /** Sets the absolute amount of completed work. */
  update(count: number): void {
    this.tick(count - this.count);
  }

  /** Prints the final line. */
  done(): void {
    this.draw(true);
  }

  /** The current line, also used by tests. */
  line(): string {
    const elapsed = (performance.now() - this.start) / 1000;
    const scaled = this.count / this.opts.unitScale;
    const rate = elapsed > 0 ? scaled / elapsed : 0;
    const parts = [this.label];
    const total = this.opts.total;
    if (total !== undefined && total > 0) {
      const frac = Math.min(1, this.count / total);
      const width = 20;
      const filled = Math.round(frac * width);
      parts.push(`[${"#".repeat(filled)}${".".repeat(width - filled)}] ${(frac * 100).toFixed(1)}%`);
      const eta = rate > 0 ? (total / this.opts.unitScale - scaled) / rate : Infinity;
      parts.push(`${scaled.toFixed(1)}/${(total / this.opts.unitScale).toFixed(1)} ${this.opts.unit}`);
      parts.push(`${rate.toFixed(2)} ${this.opts.unit}/s`, `eta ${fmtDuration(eta)}`);
    } else {
      parts.push(`${scaled.toFixed(1)} ${this.opts.unit}`, `${rate.toFixed(2)} ${this.opts.unit}/s`);
    }
    parts.push(`elapsed ${fmtDuration(elapsed)}`, `rss ${rssMiB().toFixed(0)} MiB`);
    if (this.opts.suffix) parts.push(this.opts.suffix());
    return parts.join(" | ");
  }

  private draw(final: boolean): void {
    const text = this.line();
    if (this.tty) this.opts.stream.write(`\r\x1b[2K${text}${final ? "\n" : ""}`);
    else this.opts.stream.write(`${text}\n`);
  }
}
