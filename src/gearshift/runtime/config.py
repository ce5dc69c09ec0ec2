"""The runtime's model description: one dataclass, saved in gearshift.json.

Per-block shapes live here (heads kept and FFN width of every distinct parameter block), and
so does the layer -> block map that expresses parameter sharing (ALBERT, or the shared
models of methods/steps). A plain BERT has ``layer_to_block == [0, 1, ..., L-1]``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from gearshift.errors import ConfigError

logger = logging.getLogger("gearshift.runtime")

ACTIVATIONS = ("gelu", "gelu_new", "relu", "tanh")
HEAD_KINDS = (None, "classification", "regression", "token_classification", "lm")


@dataclass
class BlockShape:
    """Width of one transformer block: attention heads kept and FFN neurons kept."""

    num_heads: int
    intermediate_size: int


@dataclass
class HeadConfig:
    """The task head on top of the encoder/decoder.

    ``pool`` picks the vector a sequence head reads: the first token ([CLS]) or the last real
    token (GPT-2). ``dense_activation`` is the pooler-like dense layer before the output
    (BERT/ALBERT/RoBERTa: tanh; DistilBERT: relu; GPT-2: none).
    """

    kind: str | None = None
    num_labels: int = 0
    pool: str = "first"  # "first" | "last"
    dense_activation: str | None = "tanh"  # None -> no dense layer
    output_bias: bool = True
    dropout: float = 0.1
    label_names: list[str] | None = None


@dataclass
class ModelConfig:
    """Everything the runtime needs to build a model, independent of the source family."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    head_dim: int
    blocks: list[BlockShape]
    layer_to_block: list[int]
    max_positions: int = 512
    type_vocab_size: int = 0  # 0: the family has no token type embeddings
    embedding_size: int | None = None  # ALBERT: factorized embeddings (E < hidden)
    word_rank: int | None = None  # word embedding as (V x r) @ (r x E): slenderized models
    norm_position: str = "post"  # "post" (BERT) | "pre" (GPT-2)
    # each layer keeps its own two LayerNorms even where blocks are shared (f(h, t) depends
    # on t through them); the blocks then hold no LayerNorm of their own
    layer_norms: bool = False
    embedding_norm: bool = True  # LayerNorm after embeddings (BERT) or not (GPT-2)
    final_norm: bool = False  # LayerNorm after the last layer (GPT-2 ln_f)
    causal: bool = False
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    position_offset: int = 0  # RoBERTa: positions start at padding_idx + 1
    pad_token_id: int | None = 0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    qkv_bias: bool = True
    tie_word_embeddings: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)
    source: str | None = None  # where the weights came from (path or hub name)

    def __post_init__(self) -> None:
        self.blocks = [b if isinstance(b, BlockShape) else BlockShape(**b) for b in self.blocks]
        if isinstance(self.head, dict):
            self.head = HeadConfig(**self.head)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ConfigError naming the field when the description is inconsistent."""
        if len(self.layer_to_block) != self.num_layers:
            raise ConfigError(
                f"layer_to_block has {len(self.layer_to_block)} entries but num_layers is "
                f"{self.num_layers}: give one block index per layer"
            )
        bad = [b for b in self.layer_to_block if not 0 <= b < len(self.blocks)]
        if bad:
            raise ConfigError(
                f"layer_to_block refers to block(s) {bad} but only {len(self.blocks)} blocks exist"
            )
        if self.word_rank is not None and self.word_rank < 1:
            raise ConfigError(
                f"word_rank={self.word_rank} must be >= 1 (or None: no factorization)"
            )
        for i, b in enumerate(self.blocks):
            if b.num_heads < 0 or b.intermediate_size < 0:
                raise ConfigError(f"block {i} has a negative width: {b}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} unknown; use one of {ACTIVATIONS}")
        if self.norm_position not in ("post", "pre"):
            raise ConfigError(f"norm_position must be 'post' or 'pre', got {self.norm_position!r}")
        if self.head.kind not in HEAD_KINDS:
            raise ConfigError(f"head kind {self.head.kind!r} unknown; use one of {HEAD_KINDS}")

    # ------------------------------------------------------------------ views
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def is_shared(self) -> bool:
        """True when some block is used by more than one layer."""
        return len(set(self.layer_to_block)) < self.num_layers

    def layer_shape(self, layer: int) -> BlockShape:
        """The shape of the block that runs at layer index ``layer``."""
        return self.blocks[self.layer_to_block[layer]]

    # ------------------------------------------------------------------ json
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict, dropping unknown keys with a warning (old files still load)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown model config keys: %s", ", ".join(unknown))
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"model config is missing required field(s): {', '.join(missing)}")
        return cls(**kwargs)

    @classmethod
    def uniform(
        cls,
        *,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        hidden_size: int,
        shared_groups: int | None = None,
        **kwargs: Any,
    ) -> ModelConfig:
        """A config with equal blocks; ``shared_groups=G`` shares G groups of consecutive layers."""
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} is not divisible by {num_heads} heads")
        groups = shared_groups or num_layers
        layer_to_block = [layer * groups // num_layers for layer in range(num_layers)]
        return cls(
            hidden_size=hidden_size,
            num_layers=num_layers,
            head_dim=hidden_size // num_heads,
            blocks=[BlockShape(num_heads, intermediate_size) for _ in range(groups)],
            layer_to_block=layer_to_block,
            **kwargs,
        )
