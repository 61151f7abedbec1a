/**
 * `megalith dashboard [RUN_DIR...] [--port 6006] [--host 127.0.0.1]`: a web page with live
 * curves of one or more runs (train/val loss, bits per byte, lr, tokens/s, MFU, memory by
 * category, loss scale, grad norm), overlaid, updating as each metrics.jsonl grows.
 *
 *   megalith dashboard runs/tiny runs/tiny-bf16     # two runs overlaid
 *   megalith dashboard                               # every run under ./runs
 */
import type { Command } from "commander";
import { ValueError } from "../core/errors.js";
import { resolveRuns, startDashboard } from "../dashboard/index.js";

function parsePort(value: string): number {
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isInteger(n) || n < 0 || n > 65535) {
    throw new ValueError(`--port must be an integer in 0..65535 (0 picks a free port), got ${JSON.stringify(value)}`);
  }
  return n;
}

export function register(program: Command): void {
  program
    .command("dashboard")
    .description("serve a web page with live training curves of one or more runs")
    .argument("[run_dirs...]", "run directories (out_dir) or folders of runs; default: ./runs")
    .option("--port <n>", "port to listen on (0 = any free port)", parsePort, 6006)
    .option("--host <addr>", "interface to listen on (0.0.0.0 to share on the network)", "127.0.0.1")
    .action(async (dirs: string[], o: { port: number; host: string }) => {
      const runs = resolveRuns(dirs.length ? dirs : ["runs"]);
      const d = await startDashboard({ runs, port: o.port, host: o.host });
      process.stderr.write(`dashboard: ${runs.map((r) => r.dir).join(", ")}\n`);
      process.stdout.write(`dashboard at ${d.url} (Ctrl-C to stop)\n`);
      await new Promise<void>((resolve) => {
        const stop = (): void => { void d.close().then(resolve); };
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
      });
    });
}
