/** Standard layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout. */
import { Tensor, normal, zeros, ones } from "../tensor/index.js";
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

export class Dropout extends Module {
  constructor(readonly p = 0.5) {
    super();
  }
  forward(x: Tensor): Tensor {
    return F.dropout(x, this.p, this.training);
  }
}
