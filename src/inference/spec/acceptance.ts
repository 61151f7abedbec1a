/**
 * The acceptance rule of speculative sampling (Leviathan et al. 2023, Chen et al. 2023), so the
 * tokens emitted with drafts are distributed exactly as without them.
 *
 * A draft x drawn from the draft's distribution q is accepted with probability
 * min(1, p(x) / q(x)), p being the target's distribution; on rejection the token comes from
 * normalize(max(0, p - q)). Both p and q are the request's PROCESSED distributions (penalties,
 * temperature, top-k, top-p, min-p: sample/'s tokenDistribution), so the rule preserves what
 * sampleNext would have drawn. After k accepted drafts the target's last row gives one more
 * token, drawn from p like any decode.
 *
 * A draft that is a deterministic function of the history (n-gram lookup, or any draft of a
 * greedy request) has a one-hot q, and the rule becomes: accept with probability p(x), else draw
 * from p with x removed. acceptOneHot does that with ONE uniform, the one plain sampling uses at
 * that position: it draws t from p and accepts iff t = x. P(accept) = p(x), and on rejection t is
 * distributed as p without x, renormalised, so it is the rule above; and the emitted token is
 * the very token plain sampling gives, so n-gram speculation never changes a seeded output.
 *
 * Random numbers come from the request's own counter-based stream (seed, offset), one purpose
 * per offset range (streamUniform), indexed by the output position being decided, so a seed
 * gives the same tokens whatever else is in the batch.
 */
import { ValueError } from "../../core/errors.js";
import { drawToken, sampleFromProbs, uniformAt, type TokenDistribution } from "../sample/index.js";

/**
 * Offsets of the uses of a request's stream; positions (output indices) stay far below 2^44.
 * "sample" is offset 0: the stream sampleNext uses, so plain decodes and bonus tokens match it.
 */
export const STREAM_OFFSETS = { sample: 0, draft: 2 ** 44, accept: 2 * 2 ** 44, residual: 3 * 2 ** 44 } as const;

/** The uniform in [0, 1) the request with `seed` uses for `purpose` at output position `index`. */
export function streamUniform(seed: number, purpose: keyof typeof STREAM_OFFSETS, index: number): number {
  return uniformAt(seed, STREAM_OFFSETS[purpose] + index);
}

/** The outcome of verifying one draft token. */
export interface Verdict {
  accepted: boolean;
  /** The token emitted at this position: the draft when accepted, else its replacement. */
  token: number;
}

/**
 * Verifies a draft with a one-hot q (n-gram, or greedy): draws t from the target's processed
 * distribution `p` with uniform `u` and accepts iff t is the draft. For greedy `p` (one
 * candidate) this is exact-match verification.
 */
export function acceptOneHot(p: TokenDistribution, draft: number, u: number): Verdict {
  const token = drawToken(p, u);
  return { accepted: token === draft, token };
}

/**
 * Verifies a draft drawn from `q` against the target's `p` (dense probability vectors over the
 * same vocabulary): accepted when uAccept < p(x) / q(x), else the token is drawn from
 * normalize(max(0, p - q)) with uResidual.
 *
 * @example
 * const v = acceptDraft(processedProbs(targetRow, sp, prompt, out), qOfDraft, x,
 *   streamUniform(sp.seed, "accept", j), streamUniform(sp.seed, "residual", j));
 */
export function acceptDraft(p: Float64Array, q: Float64Array, draft: number, uAccept: number, uResidual: number): Verdict {
  if (p.length !== q.length) throw new ValueError(`acceptDraft: target and draft distributions cover ${p.length} and ${q.length} tokens; they must share one vocabulary`);
  const qx = q[draft];
  if (qx === undefined || !(qx > 0)) throw new ValueError(`acceptDraft: draft token ${draft} has probability ${qx} under the draft distribution it was drawn from; it must be > 0`);
  if (uAccept * qx < p[draft]!) return { accepted: true, token: draft };
  const residual = new Float64Array(p.length);
  let mass = 0;
  for (let i = 0; i < p.length; i++) mass += residual[i] = Math.max(0, p[i]! - q[i]!);
  // p <= q everywhere only when p = q (both sum to 1), where rejection has probability 0; if
  // rounding gets here anyway, p itself is the right distribution.
  return { accepted: false, token: sampleFromProbs(mass > 0 ? residual : p, uResidual) };
}
