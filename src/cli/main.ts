/**
 * `megalith <command>`: the command-line entry. Each command lives in its own file and
 * registers itself on the commander program given to it (explicit, no side-effect imports).
 *
 * commander is the CLI parser: the ecosystem's most used, typed, no dependencies of its own.
 */
import { Command } from "commander";
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

const program = new Command();
program
  .name("megalith")
  .description("Train and serve transformer models from TypeScript.")
  .showHelpAfterError();

// One line per command, in the order of the data's path.
const registrations: Array<(p: Command) => void> = [tokenizer, prepare, train, launch, dashboard, plot, sample, evaluate, serve, demo, env];

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
  throw err;
}
