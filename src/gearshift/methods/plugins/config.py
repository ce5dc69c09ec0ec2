"""Settings of a compression plugin: :class:`PluginConfig`, saved in the plugin's gearshift.json."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from gearshift.errors import ConfigError

logger = logging.getLogger("gearshift.plugins")

PLACEMENTS = ("ffn", "layer")
MERGES = ("learned", "mean")
# What identifies the base model a plugin was trained for (checked when it is loaded).
BASE_FIELDS = ("family", "hidden_size", "num_layers", "source")


@dataclass
class PluginConfig:
    """What a plugin is: its ratio, where it sits, its sizes and the base model it fits.

    ``base_model`` is filled in when the plugin is built for a model (:class:`Plugin`); a
    config written by a user leaves it None.
    """

    k: int = field(
        default=4,
        metadata={"help": "Compression ratio: every k consecutive token vectors merge into one."},
    )
    placement: str = field(
        default="ffn",
        metadata={
            "help": "'ffn': only the feed-forward block runs on n/k vectors (the paper); "
            "'layer': attention and FFN both run on n/k vectors, restored after the layer."
        },
    )
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "Layer indices that carry a plugin (0-based); None = every layer."},
    )
    bottleneck: int = field(
        default=24,
        metadata={
            "help": "Width of the restorer's adapter (concat[repeated, per-token] -> bottleneck "
            "-> d). The paper uses 64 on T5-base; 24 keeps a k=4 plugin under 1 percent of "
            "MiniLM-L6's parameters (64 costs 2.1 percent). 0 = no adapter: restore by repeating."
        },
    )
    keep_first_token: bool = field(
        default=False,
        metadata={
            "help": "Keep the first token ([CLS]) out of merging: it runs unmerged and is "
            "restored exactly; windows start at the second token. Off by default, as in "
            "the paper: at k=4 'ffn' it scored higher in one run on 4 of 5 GLUE tasks, each "
            "within noise, and on three MRPC seeds the difference is not resolved "
            "(docs/plugins.md)."
        },
    )
    merge: str = field(
        default="learned",
        metadata={
            "help": "'learned': weighted pooling, weights from Linear(k*d -> k) + softmax (the "
            "paper); 'mean': the plain mean of each window's real tokens (training-free)."
        },
    )
    layer_residual: bool = field(
        default=True,
        metadata={
            "help": "Placement 'layer' only: restore the layer's change (output - merged input) "
            "and add it to each token's own input, so tokens keep their identity; False "
            "restores the merged output itself (every token of a window starts equal)."
        },
    )
    base_model: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "The base model the plugin was built for: family, hidden_size, "
            "num_layers, source. Filled in by Plugin."
        },
    )

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field and how to fix it."""
        if not isinstance(self.k, int) or self.k < 2:
            raise ConfigError(
                f"plugin k={self.k!r} is invalid: the compression ratio must be an integer >= 2"
            )
        if self.placement not in PLACEMENTS:
            raise ConfigError(
                f"plugin placement={self.placement!r} is invalid: choose one of {', '.join(PLACEMENTS)}"
            )
        if self.merge not in MERGES:
            raise ConfigError(
                f"plugin merge={self.merge!r} is invalid: choose one of {', '.join(MERGES)}"
            )
        if not isinstance(self.bottleneck, int) or self.bottleneck < 0:
            raise ConfigError(
                f"plugin bottleneck={self.bottleneck!r} is invalid: use an integer >= 0 (0 = no adapter)"
            )
        if self.layers is not None:
            if not self.layers:
                raise ConfigError(
                    "plugin layers=[] carries no plugin: give layer indices or None for all"
                )
            if min(self.layers) < 0:
                raise ConfigError(
                    f"plugin layers={self.layers} has a negative index; layers are 0-based"
                )
            if len(set(self.layers)) != len(self.layers):
                raise ConfigError(f"plugin layers={self.layers} repeats a layer")

    def layer_indices(self, num_layers: int) -> list[int]:
        """The layers that carry a plugin in a model of ``num_layers`` layers."""
        layers = list(range(num_layers)) if self.layers is None else sorted(self.layers)
        bad = [i for i in layers if i >= num_layers]
        if bad:
            raise ConfigError(
                f"plugin layers {bad} do not exist: the base model has {num_layers} layers (0..{num_layers - 1})"
            )
        return layers

    @property
    def name(self) -> str:
        """A short label such as ``k4-ffn`` or ``k4-layer-cls`` (for tables and folders)."""
        parts = [f"k{self.k}", self.placement]
        if self.merge == "mean":
            parts.append("mean")
        if self.keep_first_token:
            parts.append("cls")
        if self.placement == "layer" and not self.layer_residual:
            parts.append("noresidual")
        return "-".join(parts)

    # ------------------------------------------------------------------ json
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PluginConfig:
        """Build from a dict, dropping unknown keys with a warning (older/newer files load)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a plugin config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown plugin config keys: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text (for building CLIs)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
