"""Settings of int8 quantization: :class:`QuantizeConfig`, a JSON-ready dataclass."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from gearshift.errors import ConfigError
from gearshift.runtime.quant import QSCHEMES

logger = logging.getLogger("gearshift.quantize")


@dataclass
class QuantizeConfig:
    """Which Linears become int8 and how their scales are chosen; every field has help text."""

    modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module paths to quantize (e.g. blocks.0.attn.q; a low-rank module's path "
            "quantizes both factors); None = every Linear in the transformer blocks, dense or "
            "low-rank (decoded ones stay decoded; embeddings and the task head stay float)."
        },
    )
    qscheme: str = field(
        default="per-channel",
        metadata={
            "help": "per-channel: one scale and zero point per output row (torch's "
            "per_channel_dynamic_qconfig); per-tensor: one per matrix (default_dynamic_qconfig)."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the invalid field and the fix."""
        if self.qscheme not in QSCHEMES:
            raise ConfigError(f"qscheme {self.qscheme!r} unknown; use one of {', '.join(QSCHEMES)}")
        if self.modules is not None and (
            not isinstance(self.modules, list) or not all(isinstance(m, str) for m in self.modules)
        ):
            raise ConfigError(f"modules={self.modules!r}: give a list of module paths or None")

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-compatible dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizeConfig:
        """Build from a dict; unknown keys are dropped with a warning (old files still load)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown quantize config keys: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in data.items() if k in known})
