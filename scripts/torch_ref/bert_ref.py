"""The reference BertForPreTraining in plain PyTorch, shared by bert_fixtures.py and bert_load_check.py.

The same math and module names as Hugging Face's BertForPreTraining (post-LN encoder, exact
GELU, learned positions, token types, extended attention mask at the dtype's lowest value,
pooler + NSP head, MLM decoder tied to the word embeddings), written out because the
transformers package is not available. As in HF, `cls.predictions.decoder.weight` is the word
embedding table and `cls.predictions.decoder.bias` is `cls.predictions.bias`: state_dict()
lists both names for each shared tensor.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# HF BertForPreTraining._tied_weights_keys: names a checkpoint may omit (they are re-tied on load).
TIED_KEYS = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}


class BertEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        C = c["hidden_size"]
        self.word_embeddings = nn.Embedding(c["vocab_size"], C)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], C)
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], C)
        self.LayerNorm = nn.LayerNorm(C, eps=c["layer_norm_eps"])

    def forward(self, input_ids, token_type_ids):
        T = input_ids.shape[1]
        pos = torch.arange(T)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(pos)
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        C = c["hidden_size"]
        self.n_head = c["num_attention_heads"]
        self.query = nn.Linear(C, C)
        self.key = nn.Linear(C, C)
        self.value = nn.Linear(C, C)

    def forward(self, x, ext_mask):
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = (lin(x).view(B, T, H, D).transpose(1, 2) for lin in (self.query, self.key, self.value))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D) + ext_mask
        probs = scores.softmax(dim=-1)
        return (probs @ v).transpose(1, 2).contiguous().view(B, T, C)


class BertResidualOutput(nn.Module):
    """HF BertSelfOutput / BertOutput: LayerNorm(dense(h) + residual)."""

    def __init__(self, c, d_in):
        super().__init__()
        self.dense = nn.Linear(d_in, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, h, residual):
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = BertResidualOutput(c, c["hidden_size"])

    def forward(self, x, ext_mask):
        return self.output(self.self(x, ext_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x):
        return F.gelu(self.dense(x))  # hidden_act "gelu": the exact erf form


class BertLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertResidualOutput(c, c["intermediate_size"])

    def forward(self, x, ext_mask):
        a = self.attention(x, ext_mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c["num_hidden_layers"]))

    def forward(self, x, ext_mask):
        for layer in self.layer:
            x = layer(x, ext_mask)
        return x


class BertPooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, h):
        return torch.tanh(self.dense(h[:, 0]))


class BertModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = BertEmbeddings(c)
        self.encoder = BertEncoder(c)
        self.pooler = BertPooler(c)

    def forward(self, input_ids, token_type_ids, attention_mask):
        x = self.embeddings(input_ids, token_type_ids)
        # HF get_extended_attention_mask: (1 - mask) * finfo(dtype).min, shape (B, 1, 1, T).
        ext = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        h = self.encoder(x, ext)
        return h, self.pooler(h)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, h):
        return self.LayerNorm(F.gelu(self.dense(h)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, c, word_embeddings):
        super().__init__()
        self.transform = BertPredictionHeadTransform(c)
        self.decoder = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        self.bias = nn.Parameter(torch.zeros(c["vocab_size"]))
        self.decoder.weight = word_embeddings.weight  # tied, as HF's tie_weights()
        self.decoder.bias = self.bias

    def forward(self, h):
        return self.decoder(self.transform(h))


class BertPreTrainingHeads(nn.Module):
    def __init__(self, c, word_embeddings):
        super().__init__()
        self.predictions = BertLMPredictionHead(c, word_embeddings)
        self.seq_relationship = nn.Linear(c["hidden_size"], 2)


class BertForPreTraining(nn.Module):
    """c: an HF BERT config.json as a dict."""

    def __init__(self, c):
        super().__init__()
        self.bert = BertModel(c)
        self.cls = BertPreTrainingHeads(c, self.bert.embeddings.word_embeddings)

    def forward(self, input_ids, token_type_ids, attention_mask, labels=None, next_sentence_label=None):
        h, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        prediction_logits = self.cls.predictions(h)
        seq_relationship_logits = self.cls.seq_relationship(pooled)
        out = {"prediction_logits": prediction_logits, "seq_relationship_logits": seq_relationship_logits}
        if labels is not None and next_sentence_label is not None:
            V = prediction_logits.shape[-1]
            out["mlm_loss"] = F.cross_entropy(prediction_logits.view(-1, V), labels.view(-1), ignore_index=-100)
            out["nsp_loss"] = F.cross_entropy(seq_relationship_logits.view(-1, 2), next_sentence_label.view(-1))
            out["loss"] = out["mlm_loss"] + out["nsp_loss"]  # HF's total_loss
        return out
