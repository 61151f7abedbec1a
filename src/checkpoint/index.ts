/**
 * checkpoint: safetensors files and atomic, verifiable checkpoint directories.
 *
 * Depends on core only. It moves plain `{dtype, shape, data}` records, never Tensors, so the
 * tensor library and the training loop build on it rather than the other way round.
 *
 * @example
 * import { checkpointDirName, findLatestCheckpoint, readSafetensors, writeCheckpointDir, writeSafetensors } from "./checkpoint/index.js";
 *
 * await writeCheckpointDir(join("out", checkpointDirName(100)), async (tmp) => {
 *   await writeSafetensors(join(tmp, "model.safetensors"), weights, { format: "pt" });
 * }, { step: 100, config });
 * const latest = await findLatestCheckpoint("out"); // { step: 100, dir: "out/ckpt-000100", manifest }
 * const { tensors } = await readSafetensors(join(latest!.dir, "model.safetensors"));
 */

export {
  type SafetensorsDtype,
  SAFETENSORS_DTYPES,
  isSafetensorsDtype,
  dtypeElementSize,
  float32ToBf16Bytes,
  bf16BytesToFloat32,
  float32ToF16Bytes,
  f16BytesToFloat32,
} from "./_dtype.js";
export {
  type TensorRecord,
  type SafetensorsTensorInfo,
  type SafetensorsContents,
  type SafetensorsFile,
  type ReadSafetensorsOptions,
  SAFETENSORS_MAX_HEADER_BYTES,
  writeSafetensors,
  openSafetensors,
  readSafetensors,
} from "./safetensors.js";
export {
  type ManifestFile,
  type ManifestInfo,
  type CheckpointManifest,
  type VerifyOptions,
  MANIFEST_NAME,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  parseManifest,
  verifyCheckpointDir,
} from "./manifest.js";
export {
  type CreateTempDirOptions,
  type CommitOptions,
  type CheckpointEntry,
  type FindCheckpointOptions,
  type PruneOptions,
  checkpointDirName,
  createCheckpointTempDir,
  commitCheckpointDir,
  writeCheckpointDir,
  writeDirAtomic,
  listCheckpoints,
  findLatestCheckpoint,
  pruneCheckpoints,
} from "./atomic.js";
export {
  type FlatShardLayout,
  type OptimizerFiles,
  type SaveGroup,
  OPTIMIZER_FILE,
  SHARD_LAYOUT_FILE,
  optimizerShardFile,
  optimizerFileNames,
  writeOptimizerFiles,
  readOptimizerMoments,
  unshard,
  saveCheckpointCollective,
} from "./optimizer_files.js";
