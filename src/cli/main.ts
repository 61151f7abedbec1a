/**
 * `megalith <command>`: the command-line entry. Each command lives in its own file and
 * registers itself on the commander program given to it (explicit, no side-effect imports).
 *
 * commander is the CLI parser: the ecosystem's most used, typed, no dependencies of its own.
 */
import { Command } from "commander";
import { readFileSync } from "node:fs";
import { MegalithError } from "../core/errors.js";
import { register as prepare } from "./prepare.js";
import { register as tokenizer } from "./tokenizer.js";
import { register as train } from "./train.js";
import { register as sample } from "./sample.js";
import { register as evaluate } from "./eval.js";
import { register as demo } from "./demo.js";
import { register as serve } from "./serve.js";
import { register as launch } from "./launch.js";
import { register as env } from "./env.js";
import { register as dashboard } from "./dashboard.js";
import { register as plot } from "./plot.js";
import { register as plan } from "./plan.js";
import { register as exportModel } from "./export.js";
import { register as finetune } from "./finetune.js";

/** The package's version, from package.json (two levels up from src/cli, three from dist/src/cli). */
function packageVersion(): string {
  for (const rel of ["../../package.json", "../../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as { name?: string; version?: string };
      if (pkg.name === "megalith" && pkg.version) return pkg.version;
    } catch {
      // not here; try the next level
    }
  }
  return "unknown";
}

const program = new Command();
program
  .name("megalith")
  .description("Train and serve transformer models from TypeScript.")
  .version(packageVersion(), "-V, --version", "print the version")
  .showHelpAfterError();

// One line per command, in the order of the data's path.
const registrations: Array<(p: Command) => void> = [tokenizer, prepare, plan, train, finetune, launch, dashboard, plot, exportModel, sample, evaluate, serve, demo, env];

for (const register of registrations) register(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof MegalithError) {
    process.stderr.write(`megalith: error: ${err.message}\n`);
    process.exit(2);
  }
  // Operating-system errors (ENOENT, ENOTDIR, EACCES, ENOSPC...) are the user's environment,
  // not a bug: one line naming the call and the path, no stack trace.
  const sys = err as NodeJS.ErrnoException;
  if (sys instanceof Error && typeof sys.code === "string" && typeof sys.syscall === "string") {
    process.stderr.write(`megalith: error: ${sys.message}\n`);
    process.exit(2);
  }
  // The native core's errors (an allocation that failed, a kernel refusing its arguments) carry
  // ERR_MEGALITH_NATIVE; JavaScript's own allocation failures are RangeErrors. Both are about
  // the run's size or inputs, so one line, not a stack trace.
  if (sys instanceof Error && typeof sys.code === "string" && sys.code.startsWith("ERR_MEGALITH")) {
    process.stderr.write(`megalith: error: ${sys.message.startsWith("native") ? "" : "native: "}${sys.message}\n`);
    process.exit(2);
  }
  if (err instanceof RangeError && /allocation failed|Invalid typed array length|Invalid array length|Array buffer/i.test(err.message)) {
    process.stderr.write(`megalith: error: out of memory: ${err.message}; shrink the model or the batch\n`);
    process.exit(2);
  }
  throw err;
}
