/**
 * parallel: process groups and collectives over MPI (blocking and asynchronous), the device
 * mesh, and the pieces `parallelize()` applies to a model from outside: DDP, ZeRO's sharded
 * optimizer and FSDP's parameter-sharding units, all speaking GradSync to the train step. Every
 * primitive is the identity at group size 1, and a single process never loads MPI.
 */
export {
  worldGroup, splitGroup, setCommThreadNice, collectiveTimeoutS,
  allReduce, allReduceAsync, reduceScatter, reduceScatterAsync, allGather, allGatherAsync, broadcast, broadcastAsync,
  allToAll, allToAllAsync, barrier, barrierAsync, fence, send, sendAsync, recv, recvAsync, commStats, resetCommStats,
  type ProcessGroup, type CommKind, type ReduceOp, type Work, type CollectiveOptions, type ReduceOptions, type BroadcastOptions, type P2POptions,
} from "./collectives.js";
export { DeviceMesh, MESH_AXES, type Axis } from "./mesh.js";
export { type GradSync, noGradSync, composeGradSync } from "./grad_sync.js";
export { DataParallel, type DataParallelOptions } from "./data_parallel.js";
export { FlatShards, type ShardUnit, type ShardPiece } from "./flat_shards.js";
export { ShardedAdamW, type ShardedAdamWOptions, type ZeroStage } from "./sharded_optimizer.js";
export { FullyShardedUnits, type FSDPOptions } from "./fsdp.js";
export { parallelize, type ParallelizeConfig, type Parallelized, type ParallelModel, type BlockModel } from "./parallelize.js";
export { copyToRegion, reduceFromRegion, gatherFromSequence, reduceScatterToSequence } from "./regions.js";
export {
  applyTensorParallel, shardOfLogical, logicalFromShards, vocabParallelCrossEntropy, ColumnParallelLinear, RowParallelLinear,
  VocabParallelEmbedding, VocabParallelHead, SequenceParallelLayerNorm, SequenceParallelPositionEmbedding,
  type ShardSpec, type TensorParallelPlan, type TensorParallelOptions,
} from "./tensor_parallel.js";
export { applyBertTensorParallel, type BertTaskModel } from "./tensor_parallel_bert.js";
/** The flat-shard layout of ZeRO checkpoints (zero_layout.json) and its inverse, from checkpoint/. */
export { unshard, type FlatShardLayout as ZeroLayout } from "../checkpoint/index.js";
export { underMpi, CommError } from "../backend/mpi.js";
export { applyExpertParallel, allToAllRegion, allToAllRegionStart, isExpertParam, ExpertGradScale, ExpertShardedAdamW, type ExpertParallelPlan } from "./expert_parallel.js";
export { gatherLogical, type LogicalTensor } from "./logical_state.js";
export { PlainSchedule, batchTensors, type TrainSchedule, type MicroBatch, type StepFunctions, type BatchForward, type LossOutput } from "./schedule.js";
export { splitPipelineStages, layerSplit, PipelineSchedule, type PipelineOptions, type PipelineStagePlan, type PipelineChunk } from "./pipeline.js";
export {
  pipelineActions, simulatePipeline, simulateActionLists, bubbleFraction, modelChunkOf, locateModelChunk,
  type PipelineScheduleName, type PipelineAction, type PipelineShape, type SimulationResult, type SimulationOptions,
} from "./pipeline/schedules.js";
