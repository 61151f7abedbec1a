/**
 * parallel: process groups and collectives over MPI (blocking and asynchronous), the device
 * mesh, data parallelism and ZeRO. Every primitive is the identity at group size 1, and a
 * single process never loads MPI.
 */
export {
  worldGroup, splitGroup, setCommThreadNice, collectiveTimeoutS,
  allReduce, allReduceAsync, reduceScatter, reduceScatterAsync, allGather, allGatherAsync, broadcast, broadcastAsync,
  allToAll, allToAllAsync, barrier, barrierAsync, fence, send, sendAsync, recv, recvAsync,
  type ProcessGroup, type ReduceOp, type Work, type CollectiveOptions, type ReduceOptions, type BroadcastOptions, type P2POptions,
} from "./collectives.js";
export { DeviceMesh, MESH_AXES, type Axis } from "./mesh.js";
export { DataParallel, type DataParallelOptions } from "./data_parallel.js";
export { ZeroAdamW, unshard, type ZeroStage, type ZeroOptions, type ZeroLayout } from "./zero.js";
export { underMpi, CommError } from "./_mpi_native.js";
