/**
 * `npm run bench -- offload [--quick] [--dir DIR]`: what parallel.offload "disk" costs on this
 * machine, next to what the disk can do.
 *  - disk: sequential write (32 MiB blocks, then fsync) and read-back bandwidth of a file as
 *    large as the moments, fio-style. The read-back is normally served by the page cache (we
 *    cannot drop it without root); the offload's reads are too, while memory is free.
 *  - optimizer step: AdamW in memory vs OffloadedAdamW (32 MiB chunks) on the same parameters
 *    and random gradients: ms per step, the bytes it streams, and where the time went (waiting
 *    for I/O, the AdamW kernel, host<->chunk copies).
 *  - training step: a GPT forward + backward + step with and without offload, so the overhead
 *    is seen against a whole step; the allocator's optimizer bytes beside it. Then the same in
 *    bf16, where offload also moves the fp32 master weights out (bf16 parameters and gradients
 *    stay resident): params + grads + optimizer bytes per parameter, in memory vs offloaded.
 */
import { mkdtempSync, openSync, writeSync, fsyncSync, closeSync, readSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { GPT, AdamW, OffloadedAdamW, withScope, withAutocast, randint, randn, memoryStats, backend, type Optimizer, type Tensor } from "../src/index.js";
import type { BenchResult } from "./main.js";

const BLOCK = 32 * 2 ** 20;
/** The train-step rows' chunk: small beside the moments, so the saving shows on these model sizes. */
const TRAIN_CHUNK = 8 * 2 ** 20;

/**
 * Sequential write of `bytes` in 32 MiB blocks (GB/s into the page cache, and including the
 * fsync that puts them on the disk), then the read-back (GB/s; usually the page cache).
 */
function diskBandwidth(dir: string, bytes: number): { write_gbps: number; write_fsync_gbps: number; read_gbps: number } {
  const path = join(dir, "bandwidth.bin");
  const buf = new Uint8Array(BLOCK);
  for (let i = 0; i < buf.length; i += 4096) buf[i] = i & 255;  // not all zeros
  const fd = openSync(path, "w");
  const w0 = performance.now();
  for (let done = 0; done < bytes; done += BLOCK) writeSync(fd, buf, 0, Math.min(BLOCK, bytes - done), done);
  const w1 = performance.now();
  fsyncSync(fd);
  const w2 = performance.now();
  closeSync(fd);
  const rfd = openSync(path, "r");
  const r0 = performance.now();
  for (let done = 0; done < bytes; done += BLOCK) readSync(rfd, buf, 0, Math.min(BLOCK, bytes - done), done);
  const r1 = performance.now();
  closeSync(rfd);
  rmSync(path);
  const gbps = (ms: number) => +(bytes / (ms / 1000) / 1e9).toFixed(2);
  return { write_gbps: gbps(w1 - w0), write_fsync_gbps: gbps(w2 - w0), read_gbps: gbps(r1 - r0) };
}

/** Parameters shaped like a GPT's (matrices and vectors), `total` elements, random. */
function makeParams(total: number, seed: number): Tensor[] {
  const out: Tensor[] = [];
  let left = total, i = 0;
  while (left > 0) {
    const rows = Math.min(1024, Math.ceil(left / 1024));
    const n = Math.min(left, rows * 1024);
    out.push(randn(n === rows * 1024 ? [rows, 1024] : [n], { seed: seed + i++ }).keep());
    left -= n;
  }
  return out;
}

async function timeSteps(opt: Optimizer, params: Tensor[], steps: number): Promise<number> {
  const times: number[] = [];
  for (let s = 0; s < steps + 1; s++) {
    params.forEach((p, i) => { p.grad = randn(p.shape, { seed: 5000 + 97 * s + i }).keep(); });
    const t0 = performance.now();
    await opt.step({ gradScale: 0.9 });
    const dt = performance.now() - t0;
    opt.zeroGrad();
    if (s > 0) times.push(dt);  // the first step warms the page cache and the allocator
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

/**
 * Median ms of a GPT train step; `optimizerMiB` the optimizer's allocator bytes; `stateMiB` what
 * params + grads + optimizer grew by over the freshly built fp32 model once the first step's
 * gradients are complete (negative for the params when bf16 parameters replace them). `bf16`:
 * the forward under autocast, and offload moves the fp32 masters out too (bf16 parameters).
 */
async function trainStepMs(offloadDir: string | null, steps: number, cfg: { L: number; C: number; H: number; T: number; V: number; B: number }, bf16 = false): Promise<{ ms: number; optimizerMiB: number; stateMiB: number; params: number }> {
  const gpt = new GPT({ nLayer: cfg.L, nHead: cfg.H, nEmbd: cfg.C, blockSize: cfg.T, vocabSize: cfg.V }, { seed: 1 });
  const params = gpt.parameters();
  const before = memoryStats().live;
  const opt: Optimizer = offloadDir
    ? new OffloadedAdamW(params, { lr: 1e-4 }, { path: join(offloadDir, "train.bin"), chunkBytes: TRAIN_CHUNK, ...(bf16 ? { masterDtype: "bfloat16" as const } : {}) })
    : new AdamW(params, { lr: 1e-4 });
  const optimizerMiB = (memoryStats().live.optimizer - before.optimizer) / 2 ** 20;
  let stateMiB = 0;
  gpt.train();
  const times: number[] = [];
  for (let s = 0; s < steps + 1; s++) {
    const t0 = performance.now();
    withScope(() => {
      const x = randint(0, cfg.V, [cfg.B, cfg.T], { seed: 10 + s, dtype: "int32" });
      const y = randint(0, cfg.V, [cfg.B, cfg.T], { seed: 20 + s, dtype: "int32" });
      withAutocast(bf16 ? "bfloat16" : null, () => gpt.forward(x, y)).loss!.backward();
    });
    if (s === 0) {
      const l = memoryStats().live;
      stateMiB = (l.params + l.grads + l.optimizer - before.params - before.grads - before.optimizer) / 2 ** 20;
    }
    await opt.step({ gradScale: 1 });
    opt.zeroGrad();
    if (s > 0) times.push(performance.now() - t0);
  }
  if (opt instanceof OffloadedAdamW) opt.close();
  else for (const t of [...(opt as AdamW).m, ...(opt as AdamW).v]) t.dispose();
  for (const p of params) p.dispose();
  times.sort((a, b) => a - b);
  return { ms: times[Math.floor(times.length / 2)]!, optimizerMiB, stateMiB, params: gpt.numParameters() };
}

export async function run(args: string[]): Promise<BenchResult> {
  const quick = args.includes("--quick");
  const loadStart = +loadavg()[0]!.toFixed(1);
  const di = args.indexOf("--dir");
  const root = mkdtempSync(join(di >= 0 ? args[di + 1]! : tmpdir(), "megalith-bench-offload-"));
  const rows: BenchResult["rows"] = [];
  try {
    const psi = quick ? 8 * 2 ** 20 : 32 * 2 ** 20;  // optimizer-step parameters (moments: 8 bytes each)
    const disk = diskBandwidth(root, Math.max(8 * psi, 256 * 2 ** 20));
    rows.push({ name: `disk ${((Math.max(8 * psi, 256 * 2 ** 20)) / 2 ** 20).toFixed(0)} MiB sequential, 32 MiB blocks`, ...disk });

    const steps = quick ? 3 : 5;
    const a = makeParams(psi, 1), b = makeParams(psi, 1);
    const mem = new AdamW(a, { lr: 1e-3 });
    const memMs = await timeSteps(mem, a, steps);
    const off = new OffloadedAdamW(b, { lr: 1e-3 }, { path: join(root, "opt.bin"), chunkBytes: 32 * 2 ** 20 });
    const offMs = await timeSteps(off, b, steps);
    const t = off.file.timings, perStep = (x: number) => x / (steps + 1);  // the I/O counters include the warm-up step
    const streamed = perStep(t.bytesRead + t.bytesWritten);
    const same = a.every((p, i) => Buffer.from((p.data() as Float32Array).buffer).equals(Buffer.from((b[i]!.data() as Float32Array).buffer)));
    rows.push({
      name: `optimizer step ${(psi / 2 ** 20).toFixed(0)}M params`,
      in_memory_ms: +memMs.toFixed(1), offloaded_ms: +offMs.toFixed(1), overhead_ms: +(offMs - memMs).toFixed(1),
      streamed_mib: +(streamed / 2 ** 20).toFixed(0), offload_gbps: +(streamed / (offMs / 1000) / 1e9).toFixed(2),
      io_wait_ms: +perStep(t.waitMs).toFixed(1), adamw_ms: +perStep(t.computeMs).toFixed(1), copy_in_ms: +perStep(t.copyInMs).toFixed(1), copy_out_ms: +perStep(t.copyOutMs).toFixed(1),
      // The I/O alone at the measured rates (read + fsynced write), if nothing overlapped.
      io_alone_ms: +((streamed / 2) / (disk.read_gbps * 1e9) * 1000 + (streamed / 2) / (disk.write_fsync_gbps * 1e9) * 1000).toFixed(1),
      bit_exact: same,
    });
    off.close();
    for (const x of [...a, ...b, ...mem.m, ...mem.v]) x.dispose();

    const cfg = quick ? { L: 4, C: 256, H: 4, T: 128, V: 8192, B: 4 } : { L: 6, C: 384, H: 6, T: 256, V: 50304, B: 4 };
    const trainSteps = quick ? 6 : 8;
    const m = await trainStepMs(null, trainSteps, cfg);
    const o = await trainStepMs(root, trainSteps, cfg);
    rows.push({
      name: `train step GPT ${cfg.L}L/${cfg.C} T=${cfg.T} B=${cfg.B} (${(m.params / 1e6).toFixed(1)}M params)`,
      in_memory_ms: +m.ms.toFixed(1), offloaded_ms: +o.ms.toFixed(1), overhead_pct: +(100 * (o.ms / m.ms - 1)).toFixed(1),
      optimizer_mib_in_memory: +m.optimizerMiB.toFixed(1), optimizer_mib_offloaded: +o.optimizerMiB.toFixed(1),
      saved_bytes_per_param: +(((m.optimizerMiB - o.optimizerMiB) * 2 ** 20) / m.params).toFixed(2),
    });
    const mb = await trainStepMs(null, trainSteps, cfg, true);
    const ob = await trainStepMs(root, trainSteps, cfg, true);
    rows.push({
      name: `train step GPT ${cfg.L}L/${cfg.C} bf16, fp32 masters offloaded too`,
      in_memory_ms: +mb.ms.toFixed(1), offloaded_ms: +ob.ms.toFixed(1), overhead_pct: +(100 * (ob.ms / mb.ms - 1)).toFixed(1),
      state_mib_in_memory: +mb.stateMiB.toFixed(1), state_mib_offloaded: +ob.stateMiB.toFixed(1),
      // params 4 -> 2, grads 4 -> 2, m and v 8 -> 0: ~12 less the chunk.
      saved_bytes_per_param: +(((mb.stateMiB - ob.stateMiB) * 2 ** 20) / mb.params).toFixed(2),
    });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return {
    suite: "offload",
    env: {
      date: new Date().toISOString().slice(0, 10), quick, threads: backend.numThreads(), kernels: backend.info().kernels,
      // The machine is shared: the 1-minute load at the start and the end, next to its cores.
      load_start: loadStart, load_end: +loadavg()[0]!.toFixed(1),
      note: "reads are usually served by the page cache (no root to drop it); the offloaded bytes are m and v, 8 per parameter (fp32); with bf16 also the fp32 masters, and parameters and gradients stay bf16: 12 per parameter",
    },
    rows,
  };
}
