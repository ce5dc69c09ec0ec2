"""The runtime's model description: one dataclass, saved in gearshift.json.

Per-block shapes live here (heads kept and FFN width of every distinct parameter block), and
so does the layer -> block map that expresses parameter sharing (ALBERT, or the shared
models of methods/steps). A plain BERT has ``layer_to_block == [0, 1, ..., L-1]``.

Every model edit is described here, so an edited model is a plain model folder: per-block
widths (slim), ``word_rank`` (a low-rank word embedding: slim or factorize) and ``forms``,
the form of each edited Linear (or of a decoded word embedding) by module path:

- ``{"form": "low-rank", "rank": r}``: :class:`~gearshift.runtime.forms.LowRankLinear`;
- ``{"form": "decoded", "code_size": c, "transposed": bool, "decoder": {...}}``:
  :class:`~gearshift.runtime.forms.DecodedLinear` (``transposed`` absent on the embedding);
- ``{"form": "int8", "qscheme": "per-channel" | "per-tensor"}``:
  :class:`~gearshift.runtime.quant.Int8Linear`. A low-rank module's factors are Linears of
  their own, ``<path>.basis`` and ``<path>.coefficients``, and take int8 entries.

A low-rank or decoded entry with ``"shared": name`` shares its basis (decoder) with every
entry of that name (Basis Sharing, a grouped autoencoder); its tensors are stored once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from gearshift.errors import ConfigError

logger = logging.getLogger("gearshift.runtime")

ACTIVATIONS = ("gelu", "gelu_new", "relu", "tanh")
FORMS = ("low-rank", "decoded", "int8")
FORM_KEYS = {  # required keys of each form's entry (besides "form"; "shared" is optional)
    "low-rank": ("rank",),
    "decoded": ("code_size", "decoder"),
    "int8": ("qscheme",),
}
DECODER_KEYS = ("code_size", "row_size", "widths", "negative_slope")
WORD_EMBEDDING = "embeddings.word"
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
    # module path -> form of an edited Linear (see the module docstring); {} = all dense
    forms: dict[str, dict[str, Any]] = field(default_factory=dict)

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
        self._validate_forms()

    def _validate_forms(self) -> None:
        if not isinstance(self.forms, dict):
            raise ConfigError(f"forms must map module paths to forms, got {type(self.forms)}")
        shared: dict[str, tuple] = {}
        for path, spec in self.forms.items():
            where = f"forms[{path!r}]"
            if not isinstance(spec, dict) or spec.get("form") not in FORMS:
                raise ConfigError(f"{where} = {spec!r}: give a dict with 'form' one of {FORMS}")
            kind = spec["form"]
            lacking = [k for k in FORM_KEYS[kind] if k not in spec]
            if lacking:
                raise ConfigError(f"{where} ({kind}) lacks {', '.join(lacking)}")
            if kind == "low-rank" and not (isinstance(spec["rank"], int) and spec["rank"] >= 1):
                raise ConfigError(f"{where}: rank {spec['rank']!r} must be an int >= 1")
            if kind == "decoded":
                bad = [k for k in DECODER_KEYS if k not in (spec["decoder"] or {})]
                if bad:
                    raise ConfigError(f"{where}: the decoder entry lacks {', '.join(bad)}")
            if kind == "int8" and spec["qscheme"] not in ("per-channel", "per-tensor"):
                raise ConfigError(
                    f"{where}: qscheme {spec['qscheme']!r} must be per-channel or per-tensor"
                )
            if path == WORD_EMBEDDING and kind != "decoded":
                raise ConfigError(
                    f"{where}: a low-rank word embedding is described by word_rank, and int8 "
                    "applies to Linears; the word embedding's own form can only be 'decoded'"
                )
            if path == WORD_EMBEDDING and self.word_rank is not None:
                raise ConfigError(f"{where} is decoded but word_rank={self.word_rank} is set")
            name = spec.get("shared")
            if name is not None and kind != "int8":
                part = (kind, spec.get("rank"), json.dumps(spec.get("decoder"), sort_keys=True))
                if shared.setdefault(name, part) != part:
                    raise ConfigError(
                        f"{where}: shared part {name!r} is {part[:2]} here but {shared[name][:2]} "
                        "in another entry; members of one group share one basis (decoder)"
                    )
        # A shared basis is one module: int8 in all of its members or in none.
        for name in shared:
            members = [p for p, s in self.forms.items() if s.get("shared") == name]
            int8 = {f"{p}.basis" in self.forms for p in members}
            if len(int8) > 1:
                raise ConfigError(
                    f"forms: the basis shared as {name!r} is int8 in some members and float in "
                    f"others ({', '.join(members)}); quantize all of them or none"
                )

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
