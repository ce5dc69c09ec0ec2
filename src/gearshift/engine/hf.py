"""A gearshift model back as a Hugging Face checkpoint, where its structure is one HF can hold.

The weight-name tables of :mod:`gearshift.backbones` are read backwards (``"T"`` transposes
back, ``"qkv"`` concatenates query, key and value into GPT-2's fused Conv1D weight). What HF
cannot express is refused with the reason: per-block widths or pruned heads (transformers 5
has no ``pruned_heads``), shared layers outside ALBERT's groups, per-layer LayerNorms of
shared blocks, low-rank or decoded weights, a low-rank word embedding, torch int8 modules,
plugins / exits / steps (a stack), a head of another shape than the family's own.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from gearshift import backbones
from gearshift.errors import ConfigError
from gearshift.runtime.config import ModelConfig

HEAD_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
}


def why_not_hf(model: nn.Module) -> str | None:
    """The reason ``model`` has no Hugging Face form, or None when it has one."""
    from gearshift.runtime.model import Transformer

    if not isinstance(model, Transformer):
        return (
            f"a {type(model).__name__} runs plan providers (plugins, exits, steps) that no HF "
            "architecture has; export its base model, or use --format onnx"
        )
    c: ModelConfig = model.config
    bb = backbones.for_model_type(c.family)
    if c.head.kind not in HEAD_CLASSES:
        return f"head kind {c.head.kind!r}: only classification, regression and token heads export"
    if len({b.intermediate_size for b in c.blocks}) > 1:
        return "blocks have different FFN widths; HF configs hold one intermediate_size"
    heads = {b.num_heads for b in c.blocks}
    if heads != {c.hidden_size // c.head_dim} or c.hidden_size % c.head_dim:
        return (
            f"attention heads were pruned ({sorted(heads)} of {c.hidden_size // c.head_dim} "
            "per block); transformers 5 has no pruned_heads, so only --format onnx holds it"
        )
    if c.family == "albert":
        expected = [layer * c.num_blocks // c.num_layers for layer in range(c.num_layers)]
        if c.layer_to_block != expected or c.num_layers % c.num_blocks:
            return "the layer -> block map is not ALBERT's even groups"
    elif c.layer_to_block != list(range(c.num_layers)):
        return f"layers share blocks ({c.layer_to_block}), which only ALBERT expresses in HF"
    if c.layer_norms:
        return "shared blocks keep per-layer LayerNorms, which no HF architecture has"
    if c.word_rank:
        return f"the word embedding is low rank (rank {c.word_rank}); HF holds a full table"
    from gearshift.runtime import modules as rm

    plain = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.Dropout, nn.ModuleList, Transformer)
    plain += (rm.Embeddings, rm.Attention, rm.FeedForward, rm.Block, rm.Head, rm.LayerNorms)
    for name, m in model.named_modules():
        if type(m) not in plain:
            return (
                f"module {name} is a {type(m).__name__} (low-rank, decoded or int8 weights); "
                "HF holds dense fp32 Linears: densify it first, or use --format onnx"
            )
    defaults = bb.head_defaults
    h = c.head
    if h.kind != "token_classification" and (
        h.pool,
        h.dense_activation,
        h.output_bias,
    ) != (defaults["pool"], defaults["dense_activation"], defaults["output_bias"]):
        return f"the head (pool {h.pool}, dense {h.dense_activation}) is not {c.family}'s own"
    return None


def hf_config(c: ModelConfig) -> Any:
    """The transformers config of the same architecture as ``c`` (with its head's labels)."""
    import transformers as T

    heads = c.hidden_size // c.head_dim
    inter = c.blocks[0].intermediate_size
    h = c.head
    if c.family in ("bert", "roberta", "albert"):
        kw = dict(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            num_hidden_layers=c.num_layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=c.max_positions,
            type_vocab_size=c.type_vocab_size,
            hidden_act=c.activation,
            layer_norm_eps=c.layer_norm_eps,
            pad_token_id=c.pad_token_id,
            hidden_dropout_prob=c.hidden_dropout,
            attention_probs_dropout_prob=c.attention_dropout,
        )
        if c.family == "bert":
            cfg = T.BertConfig(classifier_dropout=h.dropout, **kw)
        elif c.family == "roberta":
            kw["pad_token_id"] = c.position_offset - 1
            cfg = T.RobertaConfig(classifier_dropout=h.dropout, **kw)
        else:
            cfg = T.AlbertConfig(
                embedding_size=c.embedding_size or c.hidden_size,
                num_hidden_groups=c.num_blocks,
                inner_group_num=1,
                classifier_dropout_prob=h.dropout,
                **kw,
            )
    elif c.family == "distilbert":
        cfg = T.DistilBertConfig(
            vocab_size=c.vocab_size,
            dim=c.hidden_size,
            n_layers=c.num_layers,
            n_heads=heads,
            hidden_dim=inter,
            max_position_embeddings=c.max_positions,
            activation=c.activation,
            pad_token_id=c.pad_token_id,
            dropout=c.hidden_dropout,
            attention_dropout=c.attention_dropout,
            seq_classif_dropout=h.dropout,
        )
    elif c.family == "gpt2":
        cfg = T.GPT2Config(
            vocab_size=c.vocab_size,
            n_embd=c.hidden_size,
            n_layer=c.num_layers,
            n_head=heads,
            n_inner=inter,
            n_positions=c.max_positions,
            activation_function=c.activation,
            layer_norm_epsilon=c.layer_norm_eps,
            resid_pdrop=c.hidden_dropout,
            attn_pdrop=c.attention_dropout,
            summary_first_dropout=h.dropout,
            pad_token_id=c.pad_token_id,
        )
    else:  # pragma: no cover - every registered family is above
        raise ConfigError(f"no HF config for family {c.family!r}")
    n = 1 if h.kind == "regression" else h.num_labels
    cfg.num_labels = n
    if h.kind == "regression":
        cfg.problem_type = "regression"
    elif h.label_names:
        cfg.id2label = dict(enumerate(h.label_names))
        cfg.label2id = {name: i for i, name in enumerate(h.label_names)}
    cfg.architectures = [_architecture(c.family, h.kind)]
    return cfg


def _architecture(family: str, kind: str) -> str:
    prefix = {
        "bert": "Bert",
        "roberta": "Roberta",
        "albert": "Albert",
        "distilbert": "DistilBert",
        "gpt2": "GPT2",
    }[family]
    suffix = "TokenClassification" if kind == "token_classification" else "SequenceClassification"
    return f"{prefix}For{suffix}"


def _pattern(runtime_name: str, qkv: str | None = None) -> re.Pattern:
    text = re.escape(runtime_name).replace(r"\{i\}", r"(\d+)")
    if qkv is not None:
        text = text.replace(r"\{qkv\}", qkv)
    return re.compile("^" + text + "$")


def hf_state(c: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (runtime names) under the HF names of ``c``'s family, without the base
    prefix; the backbone's table read backwards. ConfigError names a weight no entry covers."""
    bb = backbones.for_model_type(c.family)
    table = bb.table + bb.head_table.get(c.head.kind, [])
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for hf, rt, tf in table:
        if tf == "qkv":
            for key in state:
                m = _pattern(rt, "q").match(key)
                if m is None:
                    continue
                i = m.group(1)
                names = [rt.replace("{i}", i).replace("{qkv}", p) for p in "qkv"]
                fused = torch.cat([state[n] for n in names], dim=0)
                out[hf.replace("{i}", i)] = fused.t().contiguous() if fused.dim() == 2 else fused
                used.update(names)
            continue
        pattern = _pattern(rt)
        for key, tensor in state.items():
            m = pattern.match(key)
            if m is None:
                continue
            name = hf.replace("{i}", m.group(1)) if m.groups() else hf
            out[name] = tensor.t().contiguous() if tf == "T" else tensor
            used.add(key)
    left = sorted(set(state) - used)
    if left:
        raise ConfigError(f"no Hugging Face name for weight(s) {left[:6]} of a {c.family} model")
    return out


def to_hf(model: nn.Module, attn_implementation: str | None = None):
    """The transformers model (eval mode) computing what ``model`` computes; ConfigError with
    the reason when the structure has no HF form (:func:`why_not_hf`). ``attn_implementation``
    ("eager", "sdpa") picks transformers' attention code (default: its own choice)."""
    import transformers as T

    reason = why_not_hf(model)
    if reason is not None:
        raise ConfigError(f"this model cannot be written as a Hugging Face checkpoint: {reason}")
    c = model.config
    cfg = hf_config(c)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    hf_model = getattr(T, HEAD_CLASSES[c.head.kind]).from_config(cfg, **kw).eval()
    expected = hf_model.state_dict()
    renamed = {}
    for name, tensor in hf_state(c, {k: v.detach() for k, v in model.state_dict().items()}).items():
        bb = backbones.for_model_type(c.family)
        full = bb.base_prefix + name if bb.base_prefix + name in expected else name
        if full not in expected:
            raise ConfigError(f"weight {name} has no place in {type(hf_model).__name__}")
        renamed[full] = tensor
    result = hf_model.load_state_dict(renamed, strict=False)
    missing = [k for k in result.missing_keys if not _tied_or_buffer(hf_model, k)]
    if missing:
        raise ConfigError(f"the HF model needs weights gearshift does not have: {missing[:6]}")
    return hf_model


def _tied_or_buffer(hf_model: nn.Module, key: str) -> bool:
    buffers = dict(hf_model.named_buffers())
    return key in buffers
