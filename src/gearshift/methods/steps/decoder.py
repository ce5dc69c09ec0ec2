"""Decoders: a small GPT-2-style model trained here from raw text, perplexity and generation
at any number of steps.

No decoder checkpoint can be downloaded on this machine, so the decoder experiments train a
small pre-LN causal model (GPT-2's layout) from scratch on the raw text in the data folder,
with an 8k byte-level BPE trained on the same text (:func:`train_tokenizer`; any tokenizer
works, e.g. MiniLM's WordPiece, at the cost of a 30k-row LM head). Real GPT-2
checkpoints load through :func:`gearshift.runtime.load_pretrained` by name or path where a
hub or a local copy exists; everything here runs on them unchanged.

- :func:`decoder_config`: the small model, unshared, fully shared (``groups=1``) or
  partially shared (``groups=G``).
- :func:`lm_blocks`: the text tokenized, concatenated and cut into blocks of equal length.
- :func:`step_aware_loss`: a Trainer ``loss_fn`` that runs each batch at a step size drawn
  from a set (the step-aware training), for LM pre-training and for task fine-tuning.
- :func:`perplexity`: token-weighted perplexity at a given plan (number of steps, solver).
- :func:`generate`: greedy decoding with the key/value cache at a given plan; tokens/s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gearshift.errors import ConfigError, DataError
from gearshift.measure.flops import model_inputs
from gearshift.runtime.config import HeadConfig, ModelConfig
from gearshift.runtime.model import Transformer
from gearshift.runtime.plan import ForwardPlan

from .share import draw_group_sizes, group_layers, logged_size, steps_for_group_sizes


def decoder_config(
    vocab_size: int,
    hidden_size: int = 256,
    num_layers: int = 6,
    num_heads: int = 4,
    intermediate_size: int = 1024,
    max_positions: int = 256,
    groups: int | None = None,
    pad_token_id: int | None = None,
) -> ModelConfig:
    """A GPT-2-style config (pre-LN, causal, final LN, tied LM head); ``groups`` shares
    that many groups of consecutive layers (None: unshared)."""
    if groups is not None:
        group_layers(num_layers, groups)  # checks 1 <= groups <= num_layers
    return ModelConfig.uniform(
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        hidden_size=hidden_size,
        shared_groups=groups,
        family="gpt2",
        vocab_size=vocab_size,
        max_positions=max_positions,
        type_vocab_size=0,
        norm_position="pre",
        embedding_norm=False,
        final_norm=True,
        causal=True,
        activation="gelu_new",
        layer_norm_eps=1e-5,
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
        head=HeadConfig(kind="lm", dense_activation=None, pool="last"),
    )


def init_weights(model: Transformer, std: float = 0.02) -> Transformer:
    """GPT-2's initialisation for training from scratch: normal(0, std) weights and
    embeddings, zero biases, unit LayerNorms, and the residual output projections (attention
    out, FFN out) scaled by 1/sqrt(2 * layers). (PyTorch's defaults draw embeddings from
    N(0, 1), which with a tied LM head gives absurd first losses.)"""
    layers = model.config.num_layers
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                scale = std / math.sqrt(2 * layers) if name.endswith((".o", ".out")) else std
                module.weight.normal_(0.0, scale)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, std)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
    return model


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> Any:
    """A byte-level BPE tokenizer (GPT-2's kind) trained on ``texts`` with the ``tokenizers``
    library, as a transformers fast tokenizer (``<|endoftext|>`` is EOS and padding).
    Small decoders trained here use it: with MiniLM's 30k WordPiece vocabulary the LM head
    alone would cost more than the six layers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t.strip()), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token=eos, model_max_length=1_000_000
    )


def lm_blocks(
    tokenizer: Any, texts: Iterable[str], block_size: int = 128, limit: int | None = None
) -> list[dict[str, list[int]]]:
    """Tokenize ``texts`` (no special tokens), join them with the tokenizer's separator (or
    EOS) and cut the stream into ``block_size`` blocks (the tail is dropped); ``limit``
    caps the number of blocks. Each block is ``{"input_ids": ids, "labels": ids}``."""
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    stream: list[int] = []
    want = None if limit is None else limit * block_size
    for text in texts:
        text = text.strip()
        if not text:
            continue
        stream += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if sep is not None:
            stream.append(sep)
        if want is not None and len(stream) >= want:
            break
    n = len(stream) // block_size
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise DataError(
            f"the text gave {len(stream)} tokens, fewer than one block of {block_size}: "
            "give more text or a smaller block size"
        )
    return [
        {"input_ids": stream[i * block_size : (i + 1) * block_size]}
        | {"labels": stream[i * block_size : (i + 1) * block_size]}
        for i in range(n)
    ]


def collate_blocks(features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Stack equal-length LM blocks (no padding needed)."""
    ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long),
    }


def step_aware_loss(
    step_sizes: Sequence[float], per_group: bool = False
) -> Callable[[Any, dict], tuple]:
    """A Trainer ``loss_fn``: each batch runs at one step size drawn (with torch's RNG, so an
    exact resume replays it) from ``step_sizes`` (``per_group``: one per group of shared
    layers, :func:`draw_group_sizes`); the model's own task/LM loss is returned. ``(1,)`` is
    ordinary training."""
    sizes = [float(a) for a in step_sizes]
    if not sizes or any(not a > 0 for a in sizes):
        raise ConfigError(f"step sizes {list(step_sizes)} must be positive numbers")

    def loss_fn(model: Any, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        inner = getattr(model, "module", model)
        drawn = draw_group_sizes(inner.config, sizes, per_group)
        plan = (
            None
            if set(drawn) == {1.0}
            else ForwardPlan(steps=steps_for_group_sizes(inner.config, drawn))
        )
        a = logged_size(drawn)
        device = next(inner.parameters()).device
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        out = model(**inputs, labels=batch["labels"].to(device), plan=plan)
        if out.loss is None:
            raise ConfigError("the model returned no loss: it needs a task or LM head")
        return out.loss, {"a": a}

    return loss_fn


@torch.inference_mode()
def perplexity(
    model: Transformer,
    blocks: Sequence[dict[str, list[int]]],
    plan: ForwardPlan | None = None,
    batch_size: int = 16,
) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of ``blocks``."""
    if model.config.head.kind != "lm":
        raise ConfigError("perplexity needs a model with an LM head (head kind 'lm')")
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for i in range(0, len(blocks), batch_size):
        batch = collate_blocks(blocks[i : i + batch_size])
        ids = batch["input_ids"].to(device)
        logits = model(ids, attention_mask=batch["attention_mask"].to(device), plan=plan).logits
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            ids[:, 1:].reshape(-1),
            reduction="sum",
        )
        total += float(nll)
        count += ids[:, 1:].numel()
    return math.exp(total / count)


@dataclass
class Generation:
    ids: torch.Tensor  # (B, prompt + new)
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.ids.shape[0] * self.new_tokens / self.seconds


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_ids: torch.Tensor,
    new_tokens: int = 32,
    plan: ForwardPlan | None = None,
) -> Generation:
    """Greedy decoding with the key/value cache (one cache entry per step of ``plan``)."""
    if model.config.head.kind != "lm" or not model.config.causal:
        raise ConfigError("generation needs a causal model with an LM head")
    if plan is not None and plan.update.__name__ == "heun_update":
        raise ConfigError(
            "the Heun solver cannot decode with a key/value cache: use Euler for generation"
        )
    model.eval()
    ids = prompt_ids
    if ids.shape[1] + new_tokens > model.config.max_positions:
        raise ConfigError(
            f"prompt ({ids.shape[1]}) + {new_tokens} new tokens exceeds the model's "
            f"{model.config.max_positions} positions"
        )
    start = time.perf_counter()
    out = model(ids, plan=plan, use_cache=True)
    past = out.past_key_values
    for i in range(new_tokens):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if i < new_tokens - 1:
            out = model(nxt, plan=plan, past_key_values=past, use_cache=True)
            past = out.past_key_values
    return Generation(ids, new_tokens, time.perf_counter() - start)
