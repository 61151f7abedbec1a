/**
 * Durable-file helpers shared by the safetensors writer and checkpoint directories: chunked
 * positional reads/writes (one `read`/`write` call moves at most ~2 GiB, so big tensors go in
 * pieces), fsync of files and directories, streaming sha256, and temp-name suffixes.
 */

import { createHash, randomBytes } from "node:crypto";
import { open, readdir, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { ValueError } from "../core/errors.js";

/** Largest single read/write we issue. Node (and Linux) cap one call at just under 2 GiB. */
export const IO_CHUNK_BYTES = 1 << 30;

/** Writes all of `data` at `position`, in chunks of at most `chunkBytes`, retrying short writes. */
export async function writeFully(fh: FileHandle, data: Uint8Array, position: number, chunkBytes = IO_CHUNK_BYTES): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const n = Math.min(chunkBytes, data.length - done);
    const { bytesWritten } = await fh.write(data, done, n, position + done);
    if (bytesWritten <= 0) throw new Error(`write returned ${bytesWritten} bytes at position ${position + done}`);
    done += bytesWritten;
  }
}

/**
 * Reads into all of `dst` from `position`, in chunks of at most `chunkBytes`. Returns the number
 * of bytes read, which is less than `dst.length` only if the file ended first.
 */
export async function readFully(fh: FileHandle, dst: Uint8Array, position: number, chunkBytes = IO_CHUNK_BYTES): Promise<number> {
  let done = 0;
  while (done < dst.length) {
    const n = Math.min(chunkBytes, dst.length - done);
    const { bytesRead } = await fh.read(dst, done, n, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/**
 * Flushes a directory's entries (new names, renames) to disk. Best effort: some platforms
 * (Windows) cannot open a directory, and there a rename is as durable as the OS makes it.
 */
export async function fsyncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, "r");
    await fh.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "EISDIR" && code !== "EPERM" && code !== "EINVAL" && code !== "EACCES") throw err;
  } finally {
    await fh?.close();
  }
}

/** Size and sha256 (hex) of a file, streamed in 4 MiB pieces; with `sync`, fsyncs it too. */
export async function hashFile(path: string, sync = false): Promise<{ bytes: number; sha256: string }> {
  const fh = await open(path, "r");
  try {
    const hash = createHash("sha256");
    const buf = new Uint8Array(4 << 20);
    let bytes = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, bytes);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      bytes += bytesRead;
    }
    if (sync) await fh.sync();
    return { bytes, sha256: hash.digest("hex") };
  } finally {
    await fh.close();
  }
}

/** A suffix that no other process (and no other call in this one) will pick: `<pid>-<8 hex>`. */
export function uniqueSuffix(): string {
  return `${process.pid}-${randomBytes(4).toString("hex")}`;
}

/**
 * Every regular file under `dir`, as sorted '/'-separated relative paths, plus every
 * subdirectory (absolute) so callers can fsync them. Symlinks and special files are refused:
 * a checkpoint must hold its own bytes.
 */
export async function listTree(dir: string): Promise<{ files: string[]; dirs: string[] }> {
  const files: string[] = [];
  const dirs: string[] = [];
  async function walk(abs: string, rel: string): Promise<void> {
    for (const ent of await readdir(abs, { withFileTypes: true })) {
      const r = rel ? `${rel}/${ent.name}` : ent.name;
      if (ent.isDirectory()) {
        dirs.push(join(abs, ent.name));
        await walk(join(abs, ent.name), r);
      } else if (ent.isFile()) files.push(r);
      else throw new ValueError(`${join(abs, ent.name)}: checkpoint files must be regular files, not symlinks or special files`);
    }
  }
  await walk(dir, "");
  files.sort();
  return { files, dirs };
}
