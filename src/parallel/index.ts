/** parallel: process groups and collectives over MPI, the device mesh, data parallelism. */
export { worldGroup, splitGroup, allReduce, allReduceAsync, broadcast, allGather, reduceScatter, barrier, send, recv, type ProcessGroup, type ReduceOp } from "./collectives.js";
export { DeviceMesh, type Axis } from "./mesh.js";
export { DataParallel, type DataParallelOptions } from "./data_parallel.js";
export { underMpi } from "./_mpi_native.js";
export { ZeroAdamW } from "./zero.js";
