import { GPT, randint, withScope, memoryStats, withAutocast } from "./src/index.js";
function liveAfterForward(L: number, ac: false | "full" | "selective", dt: "float32" | "bfloat16", B: number, T: number, C: number, H: number): number {
  const m = new GPT({ nLayer: L, nHead: H, nEmbd: C, blockSize: T, vocabSize: 64 }, { activationCheckpointing: ac });
  m.train();
  const idx = randint(0, 64, [B, T]).keep(), tgt = randint(0, 64, [B, T]).keep();
  const r = withScope(() => {
    const before = memoryStats().live.activations;
    const { loss } = withAutocast(dt === "float32" ? null : dt, () => m.forward(idx, tgt));
    const after = memoryStats().live.activations;
    loss!.backward();
    return after - before;
  });
  m.zeroGrad();
  return r;
}
const B = 4, T = 128, C = 128, H = 4;
for (const dt of ["float32", "bfloat16"] as const) for (const ac of [false, "selective", "full"] as const) {
  const per = (liveAfterForward(4, ac, dt, B, T, C, H) - liveAfterForward(2, ac, dt, B, T, C, H)) / 2;
  const sbh = T * B * C;
  console.log(dt, ac, "per layer bytes", per, "=", (per / sbh).toFixed(2), "x sbh");
}
