/**
 * Per-kernel time profile: wraps every addon function with a timer while enabled, so a
 * benchmark can say where a training step's time goes ("gemm 71%, attentionBackward 9%...").
 * Off by default; the wrappers are removed by `stopProfile()`.
 */
import { native, type NativeAddon } from "./native_addon.js";

export interface ProfileEntry {
  kernel: string;
  calls: number;
  ms: number;
}

let originals: Partial<Record<keyof NativeAddon, unknown>> | null = null;
const table = new Map<string, ProfileEntry>();

/** Starts timing every native call (resets earlier counts). */
export function startProfile(): void {
  if (originals) return;
  table.clear();
  originals = {};
  const obj = native as unknown as Record<string, unknown>;
  for (const [name, fn] of Object.entries(obj)) {
    if (typeof fn !== "function") continue;
    (originals as Record<string, unknown>)[name] = fn;
    const f = fn as (...a: unknown[]) => unknown;
    obj[name] = (...args: unknown[]) => {
      const t0 = performance.now();
      try {
        return f(...args);
      } finally {
        const e = table.get(name) ?? { kernel: name, calls: 0, ms: 0 };
        e.calls++;
        e.ms += performance.now() - t0;
        table.set(name, e);
      }
    };
  }
}

/** Stops timing and returns the entries sorted by time, descending. */
export function stopProfile(): ProfileEntry[] {
  if (originals) {
    Object.assign(native as unknown as Record<string, unknown>, originals);
    originals = null;
  }
  return [...table.values()].sort((a, b) => b.ms - a.ms);
}
