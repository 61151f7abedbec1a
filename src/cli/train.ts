/**
 * `megalith train --config FILE [--set key=value ...] [--resume | --overwrite] [--allow-config-change]`
 *
 * Signals: the first SIGINT (Ctrl-C) or SIGTERM (how schedulers stop jobs) lets the current step
 * finish, saves a checkpoint, prints it and the command that resumes, and exits 130 / 143. The
 * handlers are removed on the first signal, so a second one gets the default action and ends the
 * process at once, even mid-step; an interrupted save only ever touches its temp directory, so
 * the newest complete checkpoint stays loadable.
 *
 * Under MPI (`megalith launch`), mpirun would turn SIGINT/SIGTERM into killing the job, so
 * launch sends SIGUSR1 / SIGUSR2 instead, which mpirun forwards to every rank: they mean SIGINT
 * / SIGTERM here. The ranks agree on the stop at a step boundary (Trainer.requestStop), so all
 * save the same step; each rank then exits 0 (a non-zero exit aborts an MPI job) and launch
 * exits 128 + the signal number.
 */
import type { Command } from "commander";
import { loadConfig, type TrainConfig } from "../train/config.js";
import { Trainer, type StopSignal, type StoppedRun } from "../train/trainer.js";
import { underMpi, worldGroup } from "../parallel/index.js";

interface TrainFlags {
  config: string;
  set: string[];
  resume: boolean;
  overwrite: boolean;
  allowConfigChange: boolean;
  allowSymlinks: boolean;
}

/** A word as a POSIX shell reads it back: bare when safe, else single-quoted. */
function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The command that continues this run: the same arguments with --resume (and without
 * --overwrite, which would delete what was just saved); under MPI, wrapped in `megalith launch`.
 */
export function resumeCommand(argv: readonly string[], worldSize: number): string {
  const args = argv.filter((a) => a !== "--overwrite" && a !== "--resume");
  const words = ["megalith", ...(worldSize > 1 ? ["launch", "-n", String(worldSize), "--"] : []), ...args, "--resume"];
  return words.map(shellQuote).join(" ");
}

/**
 * Routes the stop signals to `trainer.requestStop()` until the first one arrives, then steps
 * aside so the next signal ends the process with the default action. Returns a remover.
 */
function handleStopSignals(trainer: Trainer, say: (line: string) => void): () => void {
  const map: Array<[NodeJS.Signals, StopSignal]> = [["SIGINT", "SIGINT"], ["SIGTERM", "SIGTERM"]];
  // launch sends these through mpirun (which forwards them; see the header).
  if (underMpi()) map.push(["SIGUSR1", "SIGINT"], ["SIGUSR2", "SIGTERM"]);
  const handlers = map.map(([sig, as]) => [sig, () => {
    remove();
    trainer.requestStop(as);
    say(`megalith: ${as} received: finishing step ${trainer.step + 1}, then saving a checkpoint (${as === "SIGINT" ? "Ctrl-C" : "SIGTERM"} again stops at once, without saving)`);
  }] as const);
  const remove = () => {
    for (const [sig, h] of handlers) process.removeListener(sig, h);
  };
  for (const [sig, h] of handlers) process.on(sig, h);
  return remove;
}

export function register(program: Command): void {
  program
    .command("train")
    .description("train a GPT, or a BERT (model.type \"bert\"), from a JSON config (see configs/tiny.json)")
    .requiredOption("--config <file>", "training config (JSON)")
    .option("--set <key=value...>", "override config keys, e.g. --set train.max_steps=20 out_dir=runs/x", [])
    .option("--resume", "continue from the newest complete checkpoint in out_dir", false)
    .option("--overwrite", "delete the previous run in out_dir (checkpoints, metrics.jsonl, final/) and start again", false)
    .option("--allow-config-change", "with --resume: continue although the config changed in ways that break a bit-exact resume", false)
    .option("--allow-symlinks", "model.init_from: follow a model.safetensors that links outside its directory", false)
    .action(async (o: TrainFlags) => {
      await runTraining(loadConfig(o.config, o.set), o);
    });
}

/**
 * Sets up and runs a Trainer with the stop-signal handling above (shared by `train` and
 * `finetune`); prints how to resume when a signal stopped it.
 */
export async function runTraining(config: TrainConfig, o: Omit<TrainFlags, "config" | "set">): Promise<{ trainer: Trainer; result: Awaited<ReturnType<Trainer["run"]>> }> {
  const trainer = new Trainer(config, { resume: o.resume, overwrite: o.overwrite, allowConfigChange: o.allowConfigChange, allowSymlinks: o.allowSymlinks });
  const world = underMpi() ? worldGroup() : { rank: 0, size: 1 };
  const say = (line: string) => {
    if (world.rank === 0) process.stderr.write(`${line}\n`);
  };
  const removeHandlers = handleStopSignals(trainer, say);
  await trainer.setup();
  const result = await trainer.run();
  removeHandlers();
  if (result.stopped) reportStop(result.stopped, world.size, say);
  return { trainer, result };
}

/** Prints where the checkpoint is and how to resume; sets the exit code (128 + signal number). */
function reportStop(s: StoppedRun, worldSize: number, say: (line: string) => void): void {
  const resume = resumeCommand(process.argv.slice(2), worldSize);
  if (s.checkpoint) {
    say(`megalith: stopped by ${s.signal} after step ${s.step}; checkpoint saved in ${s.checkpoint}`);
    say(`megalith: resume with: ${resume}`);
  } else {
    say(`megalith: stopped by ${s.signal} before the first step; nothing to save`);
  }
  // Under MPI a non-zero exit aborts the job (see parallel/collectives.ts): every rank has
  // saved, so exit cleanly and let launch report the signal.
  process.exitCode = underMpi() ? 0 : s.signal === "SIGINT" ? 130 : 143;
}
