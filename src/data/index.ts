/**
 * data: text -> token shards -> (inputs, targets) batches. Depends on core (and the tokenizer
 * type). The path the data takes:
 *
 * - `prepare.ts`: prepareData streams text/JSONL files (or in-memory documents) through a
 *   tokenizer into train/val shards plus meta.json, atomically (`megalith prepare`).
 * - `shards.ts`: the shard file format (64-byte header + uint16/uint32 tokens), writer and reader.
 * - `meta.ts`: meta.json, the manifest that marks a prepared directory complete.
 * - `loader.ts`: TokenLoader (shuffled, resumable, data-parallel-sharded training batches) and
 *   evalBatches (deterministic validation batches).
 * - `brown.ts`, `prepare_brown.ts`: the built-in Brown corpus, prepared and cached on first use.
 * - `mlm_prepare.ts`, `mlm_shards.ts`: BERT sentence-pair examples and their index (`prepare --task mlm`).
 * - `mlm_masking.ts`, `mlm_loader.ts`: dynamic 80/10/10 masking and MlmLoader / mlmEvalBatches.
 *
 * @example
 * import { ensurePreparedBrown, TokenLoader } from "../data/index.js";
 * const { dir } = await ensurePreparedBrown(".megalith/cache", "gpt2");
 * const loader = new TokenLoader({ dir, blockSize: 256, microBatchSize: 8, seed: 1337 });
 * const { inputs, targets } = loader.nextBatch(); // Int32Array (8 * 256) each
 */
export {
  SHARD_MAGIC,
  SHARD_VERSION,
  SHARD_HEADER_BYTES,
  bytesPerToken,
  tokenDtypeFor,
  readShardHeader,
  readShard,
  ShardReader,
  ShardWriter,
} from "./shards.js";
export type { TokenDtype, ShardHeader, ShardWriterOptions } from "./shards.js";
export { META_FILE, PREPARED_FORMAT, PREPARED_FORMAT_VERSION, readMeta, validateMeta, requireTask } from "./meta.js";
export type { PreparedMeta, Split, SplitInfo, ShardInfo, SourceInfo, TokenizerInfo } from "./meta.js";
export type { PreparedTask, MlmInfo, MlmSpecialIds, MlmSplitInfo } from "./meta.js";
export { prepareData, isValDocument, tokenizerFingerprint } from "./prepare.js";
export type { PrepareOptions, PrepareInput, DocumentSource, InputFormat, DataTokenizer } from "./prepare.js";
export type { PieceSizes } from "./_text_sources.js";
export { TokenLoader, evalBatches, evalBatchCount } from "./loader.js";
export type { Batch, TokenLoaderOptions, TokenLoaderState, EvalBatchesOptions } from "./loader.js";
export { brownCorpus, brownCorpusDocuments, brownCorpusText, detagBrown } from "./brown.js";
export type { BrownDocument } from "./brown.js";
export { BROWN_VAL_FRACTION, brownSource, prepareBrown, ensurePreparedBrown } from "./prepare_brown.js";
export type { BrownPrepareOptions } from "./prepare_brown.js";
export { prepareMlmData, mlmSpecialIds, SentenceSplitter } from "./mlm_prepare.js";
export type { MlmPrepareOptions, MlmTokenizer } from "./mlm_prepare.js";
export { MLM_INDEX_MAGIC, MLM_INDEX_VERSION, MLM_INDEX_HEADER_BYTES, MLM_INDEX_RECORD_BYTES, MlmIndexReader, MlmIndexWriter } from "./mlm_shards.js";
export type { MlmExampleRecord, MlmIndexHeader } from "./mlm_shards.js";
export { MLM_IGNORE_INDEX, maskExample, maskingVocab, resolveMasking } from "./mlm_masking.js";
export type { MaskingOptions, MaskingVocab, MaskKey } from "./mlm_masking.js";
export { MlmLoader, mlmEvalBatches, mlmEvalBatchCount } from "./mlm_loader.js";
export type { MlmBatch, MlmLoaderOptions, MlmLoaderState, MlmEvalBatchesOptions } from "./mlm_loader.js";
export { readRows, readLabelledTexts, readSftExamples, seededSplit, seededPermutation } from "./labelled.js";
export type { LabelledText, ChatMessage, SftExample, FieldOptions } from "./labelled.js";
