/**
 * Int8 weight-only quantization for serving (`--quantize int8`), as a module swap.
 *
 * Each projection Linear W [out, in] is replaced in the model's module tree by an Int8Linear
 * (nn/int8_linear.ts): int8 codes q [out, in] plus one float32 scale per output channel
 * (symmetric absmax: scale = max|W[n, :]| / 127, q = round(W / scale)); activations, biases
 * and accumulation stay float32. The kernel computes y = (x @ q^T) * scales + bias without
 * materialising W, so decode (one row of x per sequence) reads a quarter of the weight bytes
 * it reads in float32. The model's forward is unchanged: `GPT.forward`, the KV-cache path
 * and the paged runner all run whatever modules the model holds.
 *
 * What is quantized: the four projections of every block (attn.c_attn, attn.c_proj,
 * mlp.c_fc, mlp.c_proj), i.e. all of the per-layer matmul weights; in a mixture-of-experts
 * block every expert's c_fc and c_proj (the bulk of an MoE model's bytes), not the router. By default the token and
 * position embeddings and the LM head stay float32: the logits are what sampling and logprobs
 * see, so that is where int8 error would be most visible. But the head is the largest single
 * read of a decode step (GPT-2: 768 x 50257 floats, 154 MB, against 340 MB for all twelve
 * blocks), so with the blocks in int8 it is about 60% of the bytes per token; `lmHead: true`
 * sets an int8 copy of the tied `wte` (read as [V, C] rows, one scale per vocabulary entry)
 * as the model's head (`GPT.setLmHead`). The embedding keeps reading the float32 rows, so
 * this costs V * C bytes of extra memory. `npm run bench -- serve` reports the perplexity of
 * both settings. LayerNorms are tiny and stay float32.
 *
 * The float32 Linears are kept by their Int8Linear (`source`), so `dequantizeModel` restores
 * the float model exactly; a quantized model is inference-only (Int8Linear has no backward).
 */
import { ValueError } from "../../core/errors.js";
import { dtypeSize } from "../../tensor/index.js";
import { Linear, Int8Linear, MoE, type Module } from "../../nn/index.js";
import type { GPT } from "../../models/index.js";

/**
 * The int8 stand-in for a Linear (per-output-channel codes + scales; the bias is shared). The
 * codes survive any enclosing `withScope` and count as parameter memory; `linear` is unchanged.
 * @example
 * const q = quantizeLinear(model.h[0]!.mlp.c_fc as Linear);
 */
export function quantizeLinear(linear: Linear): Int8Linear {
  return Int8Linear.fromLinear(linear);
}

/** @deprecated The int8 linear layer is `Int8Linear` (nn); this alias keeps older imports working. */
export const QuantizedLinear = Int8Linear;

/**
 * The dotted module paths `quantizeModelInt8` swaps: the four projections of every block; in an
 * MoE block, every expert's two (`mlp.experts.{j}.c_fc`, `.c_proj`) in place of the MLP's. The
 * router (`mlp.gate`) stays float32: its softmax picks experts, and int8 error there would
 * change which experts run rather than nudge their outputs.
 */
export function projectionPaths(model: GPT): string[] {
  return model.h.flatMap((b, i) => {
    const mlp = b.mlp instanceof MoE
      ? b.mlp.experts.flatMap((_, j) => [`mlp.experts.${j}.c_fc`, `mlp.experts.${j}.c_proj`])
      : ["mlp.c_fc", "mlp.c_proj"];
    return ["attn.c_attn", "attn.c_proj", ...mlp].map((p) => `h.${i}.${p}`);
  });
}

/** Whether every block projection of `model` is int8 (it went through `quantizeModelInt8`). */
export function isQuantizedInt8(model: GPT): boolean {
  return projectionPaths(model).every((p) => model.getSubmodule(p) instanceof Int8Linear);
}

/** What `quantizeModelInt8` did. */
export interface QuantizationSummary {
  /** Linears quantized (4 per dense block; 2 + 2 per expert in an MoE block). */
  linears: number;
  /** Their weight bytes in float32. */
  bytesFloat32: number;
  /** Their weight bytes as int8 codes + float32 scales. */
  bytesInt8: number;
  /** Whether the LM head is int8 too (its bytes are included above). */
  lmHead: boolean;
}

/** Options of `quantizeModelInt8`. */
export interface QuantizeOptions {
  /** Also give the (tied) LM head an int8 copy of `wte`; see the file comment. Default false. */
  lmHead?: boolean;
}

/** Splits "h.0.attn.c_attn" into the parent module and the child's name. */
function parentOf(model: GPT, path: string): { parent: Module; name: string } {
  const dot = path.lastIndexOf(".");
  return { parent: model.getSubmodule(path.slice(0, dot)), name: path.slice(dot + 1) };
}

const FLOAT32_BYTES = dtypeSize("float32");  // the float32 weights being replaced, for the summary

/**
 * Swaps an Int8Linear in for the four projections of every block (idempotent: projections
 * already int8 are kept and counted). Embeddings stay float32, and so does the tied LM head
 * unless `lmHead: true`; see the file comment for why.
 * @example
 * const s = quantizeModelInt8(model, { lmHead: true });
 * console.log(`${s.linears} projections: ${s.bytesFloat32} -> ${s.bytesInt8} bytes`);
 * const { logits } = noGrad(() => model.forward(idx));   // the int8 forward
 */
export function quantizeModelInt8(model: GPT, opts: QuantizeOptions = {}): QuantizationSummary {
  const summary: QuantizationSummary = { linears: 0, bytesFloat32: 0, bytesInt8: 0, lmHead: false };
  for (const path of projectionPaths(model)) {
    const { parent, name } = parentOf(model, path);
    let m = parent.getSubmodule(name);
    if (m instanceof Linear) {
      m = Int8Linear.fromLinear(m);
      parent.setModule(name, m);
    }
    if (!(m instanceof Int8Linear)) throw new ValueError(`quantizeModelInt8: ${path} is neither a Linear nor an Int8Linear`);
    summary.linears++;
    summary.bytesFloat32 += FLOAT32_BYTES * m.q.numel;
    summary.bytesInt8 += m.nbytes;
  }
  if (opts.lmHead && !(model.lm_head instanceof Int8Linear)) model.setLmHead(Int8Linear.fromWeight(model.wte.weight));
  if (model.lm_head instanceof Int8Linear) {
    summary.lmHead = true;
    summary.bytesFloat32 += FLOAT32_BYTES * model.lm_head.q.numel;
    summary.bytesInt8 += model.lm_head.nbytes;
  }
  return summary;
}

/** Puts the float32 Linears back and the tied head, freeing the int8 codes (the model runs float32 again). */
export function dequantizeModel(model: GPT): void {
  for (const path of projectionPaths(model)) {
    const { parent, name } = parentOf(model, path);
    const m = parent.getSubmodule(name);
    if (!(m instanceof Int8Linear)) continue;
    if (!m.source) throw new ValueError(`dequantizeModel: ${path} was not quantized from a Linear; nothing to restore`);
    parent.setModule(name, m.source);
    m.dispose();
  }
  if (model.lm_head instanceof Int8Linear) {
    model.lm_head.dispose();
    model.setLmHead(null);
  }
}
