/** models/bert: BERT for pre-training (MLM + NSP) and its Hugging Face weight adapters. */
export {
  type BERTConfig, type ResolvedBERTConfig, type BERTOptions, type BERTActivationCheckpointing, type BERTEncodeOptions,
  type BERTForwardOptions, type BERTOutput, resolveBERTConfig, BertForPreTraining, BertModel, BertEmbeddings, BertEncoder,
  BertLayer, BertAttention, BertSelfAttention, BertResidualOutput, BertIntermediate, BertPooler, BertPreTrainingHeads,
  BertLMPredictionHead, BertPredictionHeadTransform,
} from "./model.js";
export {
  isBERTDir, readBERTConfig, hfBertConfig, bertToRecords, saveBERT, loadBERT, loadBERTWeights,
  type SaveBERTOptions, type BERTLoadOptions, type BERTLoadReport,
} from "./weights.js";
export { BertForSequenceClassification, type BertClassifyOptions } from "./classify.js";
