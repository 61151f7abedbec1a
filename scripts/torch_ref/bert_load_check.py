#!/usr/bin/env python3
"""Loads a BERT directory saved by Megalith (saveBERT) into the plain-PyTorch BertForPreTraining
of bert_ref.py and runs one batch: the save -> PyTorch direction of test/models/bert_pytorch.test.ts.

model.safetensors is parsed with plain Python (struct + json) and torch.frombuffer, so nothing
of Megalith's reader is involved. Loading follows HF's rule for BertForPreTraining: every
state_dict name must be present except the tied copies (cls.predictions.decoder.weight/bias),
and no tensor may be left over; anything else exits with status 2 and names the tensors.

Usage:  /usr/bin/python3 scripts/torch_ref/bert_load_check.py MODEL_DIR BATCH.json OUT.json
BATCH.json: {"input_ids": [[...]], "token_type_ids": [[...]], "attention_mask": [[...]],
             "mlm_labels": [[...]], "nsp_labels": [...]}   (labels optional)
OUT.json:   {"prediction_logits": [...], "seq_relationship_logits": [...], "loss"?, "mlm_loss"?,
             "nsp_loss"?}, flattened row-major, computed in float64 from the float32 weights.
"""
import json
import struct
import sys

import torch

from bert_ref import TIED_KEYS, BertForPreTraining

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        data = bytearray(blob[base + a:base + b])  # writable copy: torch.frombuffer warns on read-only buffers
        out[name] = torch.frombuffer(data, dtype=DTYPES[info["dtype"]]).reshape(info["shape"]).clone()
    return out


def main(model_dir, batch_path, out_path):
    with open(f"{model_dir}/config.json") as f:
        cfg = json.load(f)
    model = BertForPreTraining(cfg)
    state = read_safetensors(f"{model_dir}/model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - TIED_KEYS or unexpected:
        print(f"bert_load_check: missing {sorted(set(missing) - TIED_KEYS)}, unexpected {sorted(unexpected)}", file=sys.stderr)
        sys.exit(2)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight, "decoder no longer tied"
    model = model.double().eval()
    with open(batch_path) as f:
        batch = json.load(f)
    t = lambda k: torch.tensor(batch[k], dtype=torch.long)
    labels = t("mlm_labels") if "mlm_labels" in batch else None
    nsp = t("nsp_labels") if "nsp_labels" in batch else None
    with torch.no_grad():
        res = model(t("input_ids"), t("token_type_ids"), t("attention_mask"), labels, nsp)
    out = {k: v.reshape(-1).tolist() for k, v in res.items()}
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
