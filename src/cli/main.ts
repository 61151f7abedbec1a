/**
 * `megalith <command>`: the command-line entry. Each command lives in its own file and
 * registers itself on the commander program given to it (explicit, no side-effect imports).
 *
 * commander is the CLI parser: the ecosystem's most used, typed, no dependencies of its own.
 */
import { Command } from "commander";
import { MegalithError } from "../core/errors.js";

const program = new Command();
program
  .name("megalith")
  .description("Train and serve transformer models from TypeScript.")
  .showHelpAfterError();

const registrations: Array<(p: Command) => void> = [];
// Commands are added here as they are built (one import + one line each).

for (const register of registrations) register(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof MegalithError) {
    process.stderr.write(`megalith: error: ${err.message}\n`);
    process.exit(2);
  }
  throw err;
}
