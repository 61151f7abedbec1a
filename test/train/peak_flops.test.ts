// MFU against this machine: measurePeakFlops() gives a plausible GEMM rate, resolvePeakFlops()
// prefers the config, then the cache, then measures (and caches); the trainer reports MFU
// against an explicit train.peak_flops exactly, and against the measured peak by default.
// Also val_bpb: eval lines carry the val loss in bits per byte, loss / ln 2 / bytes per token.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { measurePeakFlops, resolvePeakFlops, peakFlopsKey } from "../../src/train/peak_flops.js";
import { bitsPerByte, bytesPerToken } from "../../src/train/bits_per_byte.js";
import { Trainer } from "../../src/train/trainer.js";
import { loadTokenizer } from "../../src/tokenizers/index.js";
import { tempDir, tinyConfig, tinyData, readMetrics } from "./_helpers.js";

test("measurePeakFlops() returns a plausible positive GEMM rate", () => {
  const t0 = performance.now();
  const f = measurePeakFlops({ budgetMs: 100, shape: [256, 256, 512] });
  assert.ok(f > 1e8 && f < 1e14, `${f} FLOP/s`);
  assert.ok(performance.now() - t0 < 5000, "a short measurement");
});

test("resolvePeakFlops(): an explicit value wins; otherwise measured once, then read from the cache", () => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-peak-"));
  try {
    const cacheFile = join(dir, "peak_flops.json");
    const explicit = resolvePeakFlops({ explicit: 123e9, dtype: "float32", cacheFile });
    assert.deepEqual([explicit.flops, explicit.source], [123e9, "config"]);
    assert.ok(!existsSync(cacheFile), "no measurement when the config gives the peak");
    const measure = { budgetMs: 30, shape: [128, 128, 256] as [number, number, number] };
    const first = resolvePeakFlops({ explicit: null, dtype: "float32", cacheFile, measure });
    assert.equal(first.source, "measured");
    assert.ok(first.flops > 0);
    const cached = JSON.parse(readFileSync(cacheFile, "utf8")) as Record<string, { flops: number }>;
    const k = peakFlopsKey("float32");
    assert.equal(cached[`${k.cpu} | ${k.threads} threads | float32`]!.flops, first.flops);
    const again = resolvePeakFlops({ explicit: null, dtype: "float32", cacheFile, processes: 2, measure });
    assert.deepEqual([again.source, again.flops], ["cache", 2 * first.flops], "the job's peak is each process's x processes");
    assert.match(again.describe, /cached in .*peak_flops.json/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("Trainer: MFU is flops_per_s / train.peak_flops when given, and against the measured peak by default", async (t) => {
  const data = await tinyData();
  const oldCache = process.env.XDG_CACHE_HOME;
  process.env.XDG_CACHE_HOME = tempDir(t, "megalith-cache-");
  try {
    const explicitDir = tempDir(t);
    const tr = new Trainer(tinyConfig(explicitDir, data.dir, { train: { max_steps: 3, peak_flops: 1e9 } }), { log: false });
    await tr.setup();
    await tr.run();
    for (const m of readMetrics(explicitDir).filter((r) => r.split === undefined)) assert.equal(m.mfu, (m.flops_per_s as number) / 1e9);

    const measuredDir = tempDir(t);
    const tm = new Trainer(tinyConfig(measuredDir, data.dir, { train: { max_steps: 3 } }), { log: false });
    assert.equal(tm.config.train.peak_flops, null, "the default is null: measure");
    await tm.setup();
    await tm.run();
    const cache = JSON.parse(readFileSync(join(process.env.XDG_CACHE_HOME, "megalith", "peak_flops.json"), "utf8")) as Record<string, { flops: number }>;
    const peak = Object.values(cache)[0]!.flops;
    for (const m of readMetrics(measuredDir).filter((r) => r.split === undefined)) {
      assert.ok(Math.abs((m.mfu as number) - (m.flops_per_s as number) / peak) <= 1e-12 * (m.mfu as number), `mfu ${m.mfu} vs ${(m.flops_per_s as number) / peak}`);
    }
  } finally {
    if (oldCache === undefined) delete process.env.XDG_CACHE_HOME;
    else process.env.XDG_CACHE_HOME = oldCache;
  }
});

test("eval lines carry val_bpb = val loss / ln 2 / UTF-8 bytes per target token", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  const cfg = tinyConfig(dir, data.dir, { train: { max_steps: 2, peak_flops: 1e9 }, eval: { interval: 0, batches: 2 } });
  const tr = new Trainer(cfg, { log: false });
  await tr.setup();
  await tr.run();
  const ev = readMetrics(dir).filter((r) => r.split === "val").at(-1)!;
  const tok = loadTokenizer(data.tokenizer);
  const bpt = bytesPerToken(tok, { dir: data.dir, split: "val", blockSize: 32, microBatchSize: 4, numBatches: Math.min(2, tr.valBatchCount()) });
  assert.ok(bpt > 1 && bpt < 8, `${bpt} bytes per token`);
  assert.equal(ev.val_bpb, bitsPerByte(ev.loss as number, bpt));
  assert.ok(Math.abs(bitsPerByte(Math.LN2 * 3, 1.5) - 2) < 1e-12);
});
