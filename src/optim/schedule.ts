/** Learning-rate schedules. */
import { ValueError } from "../core/errors.js";

export interface CosineScheduleOptions {
  /** Peak learning rate, reached at the end of warmup. */
  maxLr: number;
  /** Floor at the end of decay. Default maxLr / 10. */
  minLr?: number;
  /** Linear warmup steps from 0. Default 0. */
  warmupSteps?: number;
  /** Step at which the cosine reaches minLr (held afterwards). */
  decaySteps: number;
}

/**
 * Linear warmup then cosine decay (nanoGPT's get_lr): lr at optimizer step `step` (0-based).
 * @example
 * const lr = cosineLr(step, { maxLr: 6e-4, warmupSteps: 100, decaySteps: 5000 });
 */
export function cosineLr(step: number, o: CosineScheduleOptions): number {
  const minLr = o.minLr ?? o.maxLr / 10;
  const warm = o.warmupSteps ?? 0;
  if (!(o.maxLr >= 0) || !(minLr >= 0) || warm < 0 || o.decaySteps < 0) {
    throw new ValueError(`cosineLr: invalid schedule ${JSON.stringify(o)}`);
  }
  if (step < warm) return (o.maxLr * (step + 1)) / warm;
  if (step >= o.decaySteps) return minLr;
  const ratio = (step - warm) / Math.max(1, o.decaySteps - warm);
  const coeff = 0.5 * (1 + Math.cos(Math.PI * ratio));
  return minLr + coeff * (o.maxLr - minLr);
}
