/**
 * `megalith plot RUN_DIR [RUN_DIR...] --out curves.svg|png`: the dashboard's curves to a file.
 * SVG is rendered in Node; PNG is that SVG rasterized by headless Chromium.
 *
 *   megalith plot runs/tiny --out tiny.svg
 *   megalith plot runs/a runs/b --out compare.png
 */
import type { Command } from "commander";
import { writeFileSync } from "node:fs";
import { extname } from "node:path";
import { ValueError } from "../core/errors.js";
import { collectCharts, readRuns, renderSvg, resolveRuns, svgToPng } from "../dashboard/index.js";

export function register(program: Command): void {
  program
    .command("plot")
    .description("render the training curves of one or more runs to an .svg or .png file")
    .argument("<run_dirs...>", "run directories (out_dir, holding metrics.jsonl)")
    .requiredOption("--out <file>", "output file: .svg or .png")
    .option("--width <px>", "image width in pixels", (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 200 || n > 10000) throw new ValueError(`--width must be an integer in 200..10000, got ${JSON.stringify(v)}`);
      return n;
    }, 1200)
    .action(async (dirs: string[], o: { out: string; width: number }) => {
      const ext = extname(o.out).toLowerCase();
      if (ext !== ".svg" && ext !== ".png") throw new ValueError(`--out ${JSON.stringify(o.out)}: the file name must end in .svg or .png`);
      const runs = readRuns(resolveRuns(dirs, { requireMetrics: true }));
      const svg = renderSvg(runs, { width: o.width });
      writeFileSync(o.out, ext === ".svg" ? svg : await svgToPng(svg));
      const charts = collectCharts(runs);
      process.stderr.write(`plot: ${charts.length} charts, ${charts.reduce((s, c) => s + c.lines.length, 0)} curves from ${runs.map((r) => `${r.name} (${r.rows.length} rows)`).join(", ")} -> ${o.out}\n`);
    });
}
