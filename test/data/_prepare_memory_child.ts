/**
 * Child process for prepare_memory.test.ts: prepares one input file and prints, as JSON, the
 * resident set size just before preparing and the peak over the whole process. Run alone so the
 * peak is this job's, not the test runner's.
 * Usage: node --import tsx test/data/_prepare_memory_child.ts INPUT OUTDIR [SEPARATOR]
 */
import { prepareData } from "../../src/data/prepare.js";
import { byteTokenizer } from "./_helpers.js";

const [input, outDir, separator] = process.argv.slice(2);
const baselineRss = process.memoryUsage.rss();
const started = performance.now();
const meta = await prepareData({
  tokenizer: byteTokenizer(),
  inputs: [input],
  outDir,
  docSeparator: separator,
  valFraction: 0.01,
  shardTokens: 20_000_000,
  progress: false,
});
process.stdout.write(
  JSON.stringify({
    baselineRss,
    peakRss: process.resourceUsage().maxRSS * 1024,
    seconds: (performance.now() - started) / 1000,
    tokens: meta.splits.train.tokens + meta.splits.val.tokens,
    documents: meta.splits.train.documents + meta.splits.val.documents,
  }) + "\n",
);
