/** Standard layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout. */
import { Tensor, normal, zeros, ones, stack, nextRandomOffset } from "../tensor/index.js";
import { mixSeed, currentRows } from "../core/rng_state.js";
import { ValueError, fmtShape } from "../core/errors.js";
import { Module, type Parameter } from "./module.js";
import * as F from "./functional.js";

export interface InitOptions {
  /** Seed for the weight's random stream (layout-independent init). Default: global generator. */
  seed?: number;
  /** Std of the normal init. Default 0.02 (GPT-2). */
  std?: number;
}

/**
 * A module mapping (..., in) -> (..., out): a Linear, or a stand-in swapped in for one
 * (Int8Linear). Models type their projections with it so a module swap needs no model change.
 */
export interface Projection extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  forward(x: Tensor): Tensor;
}

/** y = x W^T + b, W [out, in] (PyTorch layout). */
export class Linear extends Module implements Projection {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  constructor(readonly inFeatures: number, readonly outFeatures: number, opts: InitOptions & { bias?: boolean } = {}) {
    super();
    this.weight = this.param("weight", normal([outFeatures, inFeatures], 0, opts.std ?? 0.02, { seed: opts.seed }));
    this.bias = opts.bias ?? true ? this.param("bias", zeros([outFeatures])) : null;
  }
  forward(x: Tensor): Tensor {
    return F.linear(x, this.weight, this.bias);
  }
}

export class Embedding extends Module {
  readonly weight: Parameter;
  constructor(readonly numEmbeddings: number, readonly dim: number, opts: InitOptions = {}) {
    super();
    this.weight = this.param("weight", normal([numEmbeddings, dim], 0, opts.std ?? 0.02, { seed: opts.seed }));
  }
  forward(idx: Tensor): Tensor {
    return F.embedding(idx, this.weight);
  }
}

export class LayerNorm extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  constructor(readonly dim: number, readonly eps = 1e-5, opts: { bias?: boolean } = {}) {
    super();
    this.weight = this.param("weight", ones([dim]));
    this.bias = opts.bias ?? true ? this.param("bias", zeros([dim])) : null;
  }
  forward(x: Tensor): Tensor {
    return F.layerNorm(x, [this.dim], this.weight, this.bias, this.eps);
  }
}

export class RMSNorm extends Module {
  readonly weight: Parameter;
  constructor(readonly dim: number, readonly eps = 1e-6) {
    super();
    this.weight = this.param("weight", ones([dim]));
  }
  forward(x: Tensor): Tensor {
    return F.rmsNorm(x, [this.dim], this.weight, this.eps);
  }
}

/**
 * Dropout whose mask is keyed by position, not by how many draws came before: each call takes
 * one site of the current random stream (core's `withRandomStream`), and row b of the batch
 * (dim 0) draws its elements at offset `rows[b] x rowSize` of that site's stream, where
 * `rows` are the samples' numbers when the stream names them (training), else 0..B-1. So a
 * sample gets the same mask whichever micro-batch, data-parallel rank or pipeline stage
 * computes it. `shard` says this tensor holds part `index` of `count` equal parts of each row
 * (a sequence-parallel shard of dim 1): it then draws that part of the full row's mask.
 */
export class Dropout extends Module {
  constructor(readonly p = 0.5, readonly shard: { index: number; count: number } | null = null) {
    super();
  }
  forward(x: Tensor): Tensor {
    if (!this.training || this.p === 0) return F.dropout(x, this.p, false);
    const { seed, offset } = nextRandomOffset(1);
    const site = mixSeed(seed, offset);
    const B = x.ndim > 1 ? x.shape[0]! : 1;
    const local = x.numel / B, count = this.shard?.count ?? 1, part = this.shard?.index ?? 0;
    const rows = currentRows();
    if (rows && rows.length !== B) throw new ValueError(`Dropout: the random stream names ${rows.length} rows, the input has ${B} (shape ${fmtShape(x.shape)})`);
    const at = (b: number) => (rows ? rows[b]! : b) * local * count + part * local;
    if (x.ndim <= 1) return F.dropout(x, this.p, true, { seed: site, offset: at(0) });
    const outs = Array.from({ length: B }, (_, b) => {
      const row = x.select(0, b);
      const y = F.dropout(row, this.p, true, { seed: site, offset: at(b) });
      row.dispose();
      return y;
    });
    const out = stack(outs, 0);
    for (const t of outs) t.dispose();
    return out;
  }
}
