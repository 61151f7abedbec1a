/**
 * `megalith launch -n N [--hostfile F] -- <command> ...`: runs N ranks of a megalith command
 * under mpirun, with flags that work in containers and as root:
 *
 *   --allow-run-as-root --oversubscribe   containers run as root; more ranks than cores is fine
 *   --bind-to none                        no core pinning (ranks share this machine's cores)
 *   --tag-output                          every line starts with [job,rank]<stream>: errors name their rank
 *   --mca btl self,vader,tcp              shared memory on a node, TCP between nodes
 *   --mca btl_vader_single_copy_mechanism none   containers usually forbid the ptrace CMA copies
 *   --mca mpi_yield_when_idle 1           waiting ranks yield their core to compute
 *
 * Signals: the first SIGINT or SIGTERM of a `train` job becomes SIGUSR1 / SIGUSR2 for mpirun,
 * which forwards them to every rank: the ranks finish the same step, save a checkpoint and
 * exit, and launch exits 130 / 143. A second signal ends the job at once.
 *
 * Failure: when a rank exits non-zero, Megalith's exit hook prints "rank R of N is exiting
 * with code C" and calls MPI_Abort, and mpirun kills the other ranks; when a rank is killed
 * by a signal, mpirun itself ends the job ("mpirun noticed that process rank R ... exited on
 * signal 9"). Either way `launch` exits non-zero within seconds (tested in
 * test/parallel/collectives.test.ts). A rank that hangs is caught by the collective timeout
 * (MEGALITH_COLLECTIVE_TIMEOUT_S), which names the ranks that never arrived.
 *
 * Traces: when the command is `train` and its config sets `train.trace` = P, each rank writes
 * `P.rank<r>.json`; once mpirun exits, launch merges the files that exist into P (also after a
 * failed job: a partial timeline is what shows where it stopped).
 */
import type { Command } from "commander";
import { spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { basename, dirname, join } from "node:path";
import { ValueError } from "../core/errors.js";
import { mergeTraces } from "../core/trace.js";

// This file runs from src/cli (sources) or dist/src/cli (compiled): find the package's bin.
const here = dirname(fileURLToPath(import.meta.url));
const bin = [join(here, "..", "..", "bin", "megalith.js"), join(here, "..", "..", "..", "bin", "megalith.js")].find((p) => existsSync(p))
  ?? join(here, "..", "..", "bin", "megalith.js");

/** mpirun's flags before the program (exported for tests, benchmarks and plain-mpirun users). */
export function mpirunFlags(n: number, hostfile?: string): string[] {
  // Megalith settings travel to every rank, on other nodes too (-x exports a variable).
  const forwarded = Object.keys(process.env).filter((k) => k.startsWith("MEGALITH_")).sort().flatMap((k) => ["-x", k]);
  return [
    "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--tag-output",
    "--mca", "btl", "self,vader,tcp", "--mca", "btl_vader_single_copy_mechanism", "none",
    // Waiting ranks yield the core instead of busy-polling: with ranks sharing cores (or a
    // communication thread beside compute), polling steals the CPU the compute needs
    // (measured here: dp=2 training 971 -> 2900 tokens/s).
    "--mca", "mpi_yield_when_idle", "1",
    ...(hostfile ? ["--hostfile", hostfile] : []),
    ...forwarded, "-np", String(n),
  ];
}

/**
 * The whole mpirun argument list: flags, then `node [nodeArgs] <script> <rest>`; the script
 * defaults to megalith's bin.
 * @example
 * spawnSync("mpirun", mpirunArgs(2, ["train", "--config", "c.json", "--set", "parallel.dp=2"]));
 */
export function mpirunArgs(n: number, rest: string[], hostfile?: string, script = bin, nodeArgs: string[] = []): string[] {
  return [...mpirunFlags(n, hostfile), process.execPath, ...nodeArgs, script, ...rest];
}

/** The values of `--config F` / `--config=F` and `--set k=v ...` / `--set=k=v` in a train
 *  command line, read the way commander reads them for `megalith train` (--set is variadic). */
function trainFlags(args: readonly string[]): { config?: string; sets: string[] } {
  let config: string | undefined;
  const sets: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--config") config = args[++i];
    else if (a.startsWith("--config=")) config = a.slice("--config=".length);
    else if (a.startsWith("--set=")) sets.push(a.slice("--set=".length));
    else if (a === "--set") while (i + 1 < args.length && !args[i + 1]!.startsWith("-")) sets.push(args[++i]!);
  }
  return { config, sets };
}

/**
 * After a launched `train` job: merges the per-rank traces `P.rank<r>.json` that exist into P
 * when the job's config sets `train.trace` = P, and returns P (null when there was nothing to
 * merge). Never throws: a config that cannot be read, or a trace that cannot be merged, must
 * not turn a finished job into a failed launch, so it says why on stderr and returns null.
 * @example
 * await mergeLaunchTraces(["train", "--config", "c.json", "--set", "train.trace=runs/x/trace.json"]);
 */
export async function mergeLaunchTraces(command: readonly string[]): Promise<string | null> {
  if (command[0] !== "train") return null;
  const { config, sets } = trainFlags(command.slice(1));
  if (!config) return null;
  let path: string | null;
  try {
    // Imported here, not at the top: tests and scripts import this file for mpirunArgs, and
    // should not load the training stack for it.
    const { loadConfig } = await import("../train/index.js");
    path = loadConfig(config, sets).train.trace;
  } catch {
    return null;  // the ranks have already reported a bad config
  }
  if (!path) return null;
  const dir = dirname(path), prefix = `${basename(path)}.rank`;
  let files: string[];
  try {
    files = readdirSync(dir).filter((n) => n.startsWith(prefix) && /^\d+\.json$/.test(n.slice(prefix.length)))
      .sort((a, b) => parseInt(a.slice(prefix.length), 10) - parseInt(b.slice(prefix.length), 10)).map((n) => join(dir, n));
  } catch {
    files = [];
  }
  if (files.length === 0) {
    process.stderr.write(`megalith launch: train.trace is ${path}, but no rank wrote ${path}.rank<r>.json; nothing to merge\n`);
    return null;
  }
  try {
    const n = mergeTraces(files, path);
    process.stdout.write(`megalith launch: merged the traces of ${files.length} rank${files.length === 1 ? "" : "s"} (${n} events) into ${path}; ` +
      "open it in ui.perfetto.dev or chrome://tracing\n");
    return path;
  } catch (e) {
    process.stderr.write(`megalith launch: could not merge the traces into ${path}: ${(e as Error).message}\n`);
    return null;
  }
}

export function register(program: Command): void {
  program
    .command("launch")
    .description("run a megalith command on N ranks with mpirun, e.g. launch -n 2 -- train --config c.json --set parallel.dp=2")
    .requiredOption("-n, --np <n>", "number of ranks")
    .option("--hostfile <file>", "Open MPI hostfile for multi-machine runs")
    .argument("<command...>", "the megalith command and its flags (after --)")
    .allowUnknownOption(true)
    .action(async (command: string[], o: { np: string; hostfile?: string }) => {
      const n = Number(o.np);
      if (!Number.isInteger(n) || n < 1) throw new ValueError(`--np must be a positive integer, got ${JSON.stringify(o.np)}`);
      if (o.hostfile && !existsSync(o.hostfile)) throw new ValueError(`--hostfile ${JSON.stringify(o.hostfile)} does not exist`);
      // One compute thread per rank by default when ranks share this machine's cores.
      process.env.MEGALITH_NUM_THREADS ??= "1";
      // A train job runs in its own process group, so a terminal's Ctrl-C reaches launch alone.
      const graceful = command[0] === "train";
      const child = spawn("mpirun", mpirunArgs(n, command, o.hostfile), { stdio: "inherit", detached: graceful });
      // Open MPI's mpirun answers SIGINT/SIGTERM by killing every rank within a second, but
      // forwards SIGUSR1/SIGUSR2 to them: a train job gets those for its first signal and
      // stops gracefully (all ranks finish the same step and save; see cli/train.ts). A second
      // signal, or any signal for other commands, goes to mpirun as it is: the job ends at once.
      let stopSignal: NodeJS.Signals | null = null;
      const forward = (sig: NodeJS.Signals) => {
        if (graceful && stopSignal === null) {
          stopSignal = sig;
          process.stderr.write(`megalith launch: ${sig}: every rank finishes its step and saves a checkpoint (${sig} again ends the job at once)\n`);
          child.kill(sig === "SIGINT" ? "SIGUSR1" : "SIGUSR2");
        } else child.kill(sig === "SIGINT" ? "SIGINT" : "SIGTERM");
      };
      process.on("SIGINT", forward);
      process.on("SIGTERM", forward);
      const code = await new Promise<number>((resolve) => {
        child.on("error", (e: NodeJS.ErrnoException) => {
          process.stderr.write(e.code === "ENOENT" ? "megalith launch: mpirun not found; install Open MPI (apt-get install openmpi-bin libopenmpi-dev)\n"
            : `megalith launch: could not start mpirun: ${e.message}\n`);
          resolve(127);
        });
        child.on("exit", (c, sig) => resolve(c ?? 128 + (sig === "SIGKILL" ? 9 : sig === "SIGINT" ? 2 : 15)));
      });
      if (code !== 127) await mergeLaunchTraces(command);
      // The ranks saved and exited 0 after a graceful stop: report the signal as the exit code.
      if (code === 0 && stopSignal !== null) process.exit(stopSignal === "SIGINT" ? 130 : 143);
      if (code !== 0 && code !== 127) {
        process.stderr.write(`megalith launch: the job failed (mpirun exit code ${code}${code === 124 ? ": a collective timed out" : ""}); the [job,rank] tags above show which rank failed\n`);
      }
      process.exit(code);
    });
}
