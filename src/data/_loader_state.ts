/**
 * The resume check TokenLoader and MlmLoader share: a saved loader state is accepted only for
 * the loader kind, version and settings it was saved with (split, seed, shuffle, the dataset's
 * size...), and yields the position to continue from.
 */
import { ValueError } from "../core/errors.js";

/** The fields every loader state has. */
interface SavedLoaderState {
  kind: string;
  version: number;
  position: number;
}

/**
 * The position of `saved` after checking it against `mine` (this loader's own state): the same
 * kind and version, equal `keys` (compared as JSON), and a non-negative integer position.
 * `dataKey` is the key whose mismatch means the prepared data changed; `what` names the loader.
 * @example
 * this.position = restoredPosition(state, this.state(), ["split", "seed"], "windows", "a TokenLoader");
 */
export function restoredPosition<S extends SavedLoaderState>(saved: S, mine: S, keys: ReadonlyArray<keyof S & string>, dataKey: keyof S & string, what: string): number {
  const s = saved as Partial<S> | null;
  if (s?.kind !== mine.kind || s.version !== mine.version) {
    throw new ValueError(`not ${what} state (version ${mine.version}): ${JSON.stringify(saved)?.slice(0, 200)}`);
  }
  for (const key of keys) {
    if (JSON.stringify(s[key]) !== JSON.stringify(mine[key])) {
      throw new ValueError(
        `cannot restore loader state: it was saved with ${key} = ${JSON.stringify(s[key])}, this loader has ${JSON.stringify(mine[key])}` +
          (key === dataKey ? " (the prepared data differs from the data the state was saved on)" : ""),
      );
    }
  }
  if (!Number.isSafeInteger(s.position) || s.position! < 0) throw new ValueError(`loader state position must be a non-negative integer, got ${s.position}`);
  return s.position!;
}
