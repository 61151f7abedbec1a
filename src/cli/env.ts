/**
 * `megalith env`: what this installation runs on — the backend, the kernel set it chose from
 * the CPU's features (and the ones it could run), the bf16 GEMM implementation, threads and
 * versions. `--json` for scripts. The first thing to paste into a bug report.
 */
import type { Command } from "commander";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { backend } from "../backend/index.js";

/** Megalith's package.json version (found walking up from this file: src/ or dist/src/). */
function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++, dir = dirname(dir)) {
    const p = join(dir, "package.json");
    if (existsSync(p)) return (JSON.parse(readFileSync(p, "utf8")) as { version: string }).version;
  }
  return "unknown";
}

/** The environment report as a plain record. */
export function envReport(): Record<string, unknown> {
  const info = backend.info();
  return {
    megalith: packageVersion(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    backend: info.backend,
    kernels: info.kernels,
    kernelSets: info.kernelSets,
    gemmBf16: info.gemmBf16,
    threads: info.threads,
    features: info.features,
    openblasCoretype: process.env.OPENBLAS_CORETYPE ?? null,
  };
}

export function register(program: Command): void {
  program
    .command("env")
    .description("print the backend, the kernels selected for this CPU and the bf16 GEMM in use")
    .option("--json", "one JSON object")
    .action((o: { json?: boolean }) => {
      const r = envReport();
      if (o.json) {
        process.stdout.write(JSON.stringify(r) + "\n");
        return;
      }
      const feats = Object.entries(r.features as Record<string, boolean>).filter(([, v]) => v).map(([k]) => k);
      const lines = [
        `megalith ${r.megalith} (node ${r.node}, ${r.platform})`,
        `backend:     ${r.backend}`,
        `kernels:     ${r.kernels} (this CPU can run: ${(r.kernelSets as string[]).join(", ")})`,
        `bf16 gemm:   ${r.gemmBf16}`,
        `threads:     ${r.threads}`,
        `cpu:         ${feats.join(" ") || "(no SIMD features detected)"}`,
        `openblas:    OPENBLAS_CORETYPE=${r.openblasCoretype ?? "(library default)"}`,
      ];
      process.stdout.write(lines.join("\n") + "\n");
    });
}
