/**
 * n-gram prompt lookup (speculative decoding without a draft model): find the most recent
 * earlier occurrence of the sequence's last n tokens (n from ngramMax down to 1) and propose
 * the tokens that followed it. Cheap, deterministic in the history (so its q is one-hot), and
 * effective on text that repeats its prompt: code edits, extraction, summaries with quotes.
 */

/**
 * Up to `k` draft tokens continuing `tokens` (prompt + output), or [] when no n-gram recurs.
 *
 * @example
 * proposeNgram([5, 6, 7, 9, 5, 6], 3, 2); // [7, 9]: "5 6" occurred before, followed by 7 9
 */
export function proposeNgram(tokens: readonly number[], ngramMax: number, k: number): number[] {
  if (k <= 0) return [];
  for (let n = Math.min(ngramMax, tokens.length - 1); n >= 1; n--) {
    const at = tokens.length - n;
    for (let j = at - 1; j >= 0; j--) {
      let match = true;
      for (let i = 0; i < n; i++) if (tokens[j + i] !== tokens[at + i]) { match = false; break; }
      if (match) return tokens.slice(j + n, Math.min(j + n + k, tokens.length));
    }
  }
  return [];
}
