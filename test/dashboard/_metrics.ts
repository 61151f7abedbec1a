// Synthetic metrics.jsonl content with every field the trainer writes: train steps, eval rows
// (with val_bpb), an fp16 skipped step, and a torn last line.

/** One train row at `step` (values vary with the step and the run's offset). */
export function trainRow(step: number, k = 0): Record<string, unknown> {
  return {
    step, loss: 10 - step * 0.05 + k, lr: 1e-3 * (1 + step / 100), grad_norm: 1 + 1 / (step + 1), tokens_per_s: 12000 + step * 7 + k,
    flops_per_s: 5e10, mfu: 0.25 + step / 1000, mem_live_mb: 100, mem_peak_mb: 180 + step, mem_params_mb: 40, mem_grads_mb: 40,
    mem_optimizer_mb: 80, mem_act_peak_mb: 60 + (step % 3), step_ms: 80, loss_scale: 2 ** (16 - (step % 2)), skipped_steps: 0,
  };
}

/** Rows of a run: `n` train steps, an eval every 5 steps, one skipped step at step 3. */
export function runRows(n: number, k = 0): Record<string, unknown>[] {
  const rows: Record<string, unknown>[] = [];
  for (let s = 0; s < n; s++) {
    rows.push(s === 3 ? { step: 3, skipped: true, reason: "fp16 gradient overflow at loss scale 65536", loss_scale: 32768, skipped_steps: 1 } : trainRow(s, k));
    if ((s + 1) % 5 === 0) rows.push({ step: s + 1, split: "val", loss: 9 - s * 0.04 + k, val_bpb: 2.5 - s * 0.01 });
  }
  return rows;
}

export const toJsonl = (rows: readonly Record<string, unknown>[]): string => rows.map((r) => JSON.stringify(r) + "\n").join("");

/** The [step, value] points metrics rows give one series (what every view must draw). */
export function expectedPoints(rows: readonly Record<string, unknown>[], key: string, kind: "train" | "val"): Array<[number, number]> {
  return rows
    .filter((r) => (kind === "val" ? r.split === "val" : r.split === undefined && (r.skipped !== true || key === "loss_scale")))
    .filter((r) => typeof r[key] === "number")
    .map((r) => [r.step as number, r[key] as number]);
}
