/** `megalith train --config FILE [--set key=value ...] [--resume]` */
import type { Command } from "commander";
import { loadConfig } from "../train/config.js";
import { Trainer } from "../train/trainer.js";

export function register(program: Command): void {
  program
    .command("train")
    .description("train a GPT from a JSON config (see configs/tiny.json)")
    .requiredOption("--config <file>", "training config (JSON)")
    .option("--set <key=value...>", "override config keys, e.g. --set train.max_steps=20 out_dir=runs/x", [])
    .option("--resume", "continue from the newest complete checkpoint in out_dir", false)
    .action(async (o: { config: string; set: string[]; resume: boolean }) => {
      const config = loadConfig(o.config, o.set);
      const trainer = new Trainer(config, { resume: o.resume });
      await trainer.setup();
      await trainer.run();
    });
}
