/**
 * Run directories and their metrics.jsonl, read incrementally as training appends to it.
 *
 * `MetricsTail` remembers how far it has read and returns only complete new lines, so a line
 * the trainer is halfway through writing is picked up on the next read. A file that shrank
 * (`--resume` truncates metrics.jsonl to the resumed step) or was replaced (a new inode) is read
 * again from the start and reported as a reset, so the view never keeps rows that are gone.
 *
 * `watchRuns` wakes on fs.watch events and also polls: fs.watch is not delivered on every file
 * system (network mounts, some container overlays), and a poll of a few stat() calls a second
 * costs nothing next to training.
 */
import { closeSync, existsSync, openSync, readSync, readdirSync, statSync, watch, type FSWatcher } from "node:fs";
import { basename, join, resolve } from "node:path";
import { ValueError } from "../core/errors.js";
import { parseMetricsLines } from "./series.js";

/** One run to show: its name in legends and where its metrics.jsonl is. */
export interface RunSource {
  /** Legend name: the directory's base name, or its path when two runs share a base name. */
  name: string;
  dir: string;
  file: string;
}

/** The metrics file of a run directory. */
export const METRICS_FILE = "metrics.jsonl";

/**
 * Turns command-line paths into runs. A directory holding metrics.jsonl is a run; a directory
 * without one whose subdirectories hold one (`runs/`) stands for those runs; any other path is
 * taken as a run that has not written metrics yet (the dashboard waits for the file).
 * `requireMetrics` (for `plot`) refuses paths with nothing to draw.
 * @example resolveRuns(["runs"]) // [{ name: "demo", dir: "runs/demo", file: "runs/demo/metrics.jsonl" }, ...]
 */
export function resolveRuns(paths: readonly string[], opts: { requireMetrics?: boolean } = {}): RunSource[] {
  const dirs: string[] = [];
  for (const p of paths) {
    if (existsSync(join(p, METRICS_FILE))) {
      dirs.push(p);
      continue;
    }
    const children = isDirectory(p)
      ? readdirSync(p).sort().map((n) => join(p, n)).filter((d) => existsSync(join(d, METRICS_FILE)))
      : [];
    if (children.length) dirs.push(...children);
    else if (opts.requireMetrics) {
      throw new ValueError(`${p}: no ${METRICS_FILE} there or in its subdirectories; pass a run's out_dir (where train writes ${METRICS_FILE})`);
    } else dirs.push(p);
  }
  const unique = [...new Map(dirs.map((d) => [resolve(d), d])).values()];
  const base = unique.map((d) => basename(resolve(d)));
  return unique.map((dir, i) => ({
    name: base.filter((b) => b === base[i]).length > 1 ? dir : base[i]!,
    dir,
    file: join(dir, METRICS_FILE),
  }));
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** What one read of a growing metrics.jsonl found. */
export interface TailRead {
  /** True when the file shrank or was replaced: `rows` are then the whole file, not an addition. */
  reset: boolean;
  rows: Record<string, unknown>[];
}

/** Incremental reader of one metrics.jsonl (complete lines only). */
export class MetricsTail {
  private offset = 0;
  private ino = -1;

  constructor(readonly file: string) {}

  /**
   * The complete lines added since the last read (all of them the first time). A missing file
   * reads as no rows. Synchronous: metrics lines are small and a read is one pread.
   */
  read(): TailRead {
    let st;
    try {
      st = statSync(this.file);
    } catch {
      return { reset: false, rows: [] };
    }
    let reset = false;
    if (st.ino !== this.ino || st.size < this.offset) {
      reset = this.ino !== -1;
      this.ino = st.ino;
      this.offset = 0;
    }
    if (st.size === this.offset) return { reset, rows: [] };
    const buf = Buffer.alloc(st.size - this.offset);
    const fd = openSync(this.file, "r");
    let n = 0;
    try {
      n = readSync(fd, buf, 0, buf.length, this.offset);
    } finally {
      closeSync(fd);
    }
    // Only up to the last newline: a line being written now is read once it is complete.
    const end = buf.subarray(0, n).lastIndexOf(0x0a);
    if (end < 0) return { reset, rows: [] };
    this.offset += end + 1;
    return { reset, rows: parseMetricsLines(buf.subarray(0, end + 1).toString("utf8")).rows };
  }
}

/** Options of `watchRuns()`. */
export interface WatchOptions {
  /** Poll interval in ms beside fs.watch. Default 500. */
  pollMs?: number;
}

/**
 * Calls `onRead(runIndex, read)` with each run's whole file now, then with every addition (or
 * reset) as the files change. Returns a function that stops watching.
 * @example const stop = watchRuns(runs, (i, r) => console.log(runs[i].name, r.rows.length));
 */
export function watchRuns(runs: readonly RunSource[], onRead: (run: number, read: TailRead) => void, opts: WatchOptions = {}): () => void {
  const tails = runs.map((r) => new MetricsTail(r.file));
  const check = (i: number): void => {
    const r = tails[i]!.read();
    if (r.reset || r.rows.length) onRead(i, r);
  };
  runs.forEach((_, i) => onRead(i, tails[i]!.read()));
  const watchers: FSWatcher[] = [];
  runs.forEach((run, i) => {
    try {
      // The directory, not the file: the file may not exist yet, or be replaced.
      const w = watch(run.dir, { persistent: false }, (_event, name) => {
        if (name === null || name === METRICS_FILE) check(i);
      });
      w.on("error", () => w.close());
      watchers.push(w);
    } catch {
      // No directory yet, or no inotify: the poll below covers it.
    }
  });
  const timer = setInterval(() => runs.forEach((_, i) => check(i)), opts.pollMs ?? 500);
  timer.unref();
  return () => {
    clearInterval(timer);
    for (const w of watchers) w.close();
  };
}
