"""How plugins attach to a frozen model: :class:`Plugin`, :class:`PluginModel`, plugin folders.

A :class:`Plugin` holds one :class:`PluginLayer` (merger + restorer) per layer it covers and
turns them into a :class:`~gearshift.runtime.ForwardPlan` for one forward pass:

- placement ``"ffn"`` (the paper): ``ffn_wrap[layer]`` merges the FFN's input x (B, n, d) to
  (B, m, d), runs the frozen FFN on it and restores (B, n, d); attention stays at full length.
  x is the layer's own pre-FFN state: ``LN(h + Attn(h))`` in post-LN BERT, ``LN(h)`` in
  pre-LN models, so the merger sees normalised vectors in both, as in the paper (T5: LN(h)).
- placement ``"layer"``: ``block_wrap[layer]`` merges the layer's input h and its padding
  mask, runs the whole frozen layer (attention too) on the merged sequence and restores,
  with h as the restorer's per-token input. With ``layer_residual`` (default) the restorer
  restores the layer's change ``y - merged`` and adds it to h, so every token keeps its own
  identity through the layer; otherwise the merged output itself is restored.

A plugin folder is ``gearshift.json`` (kind "plugin", the :class:`PluginConfig` with the base
model's identity) + ``plugin.safetensors`` (the plugin's weights only).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gearshift.constants import CONFIG_NAME, FORMAT_VERSION, PLUGIN_WEIGHTS_NAME
from gearshift.errors import ArtifactError, ConfigError
from gearshift.measure.flops import analytic_flops
from gearshift.runtime.config import ModelConfig
from gearshift.runtime.io import write_folder_atomically
from gearshift.runtime.model import Transformer, TransformerOutput
from gearshift.runtime.modules import AttentionMask
from gearshift.runtime.plan import ForwardPlan
from gearshift.runtime.stack import PlanProvider, Stack

from .config import PluginConfig
from .modules import TokenMerger, TokenRestorer

logger = logging.getLogger("gearshift.plugins")


# ---------------------------------------------------------------------- one layer
class PluginLayer(nn.Module):
    """The merger and restorer of one layer, and the two ways they wrap it."""

    def __init__(self, hidden_size: int, config: PluginConfig) -> None:
        super().__init__()
        self.merger = TokenMerger(
            hidden_size,
            config.k,
            learned=config.merge == "learned",
            keep_first_token=config.keep_first_token,
        )
        self.restorer = TokenRestorer(hidden_size, config.k, config.bottleneck)
        self.layer_residual = config.layer_residual

    def compress_ffn(self, ffn_fn, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """``ffn_wrap``: the FFN runs on the merged vectors; returns (B, n, d)."""
        merged, info = self.merger(x, keep)  # (B, m, d)
        return self.restorer(ffn_fn(merged), x, info)

    def compress_layer(self, block_fn, h: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        """``block_wrap``: attention and FFN run on the merged vectors; returns (B, n, d)."""
        merged, info = self.merger(h, mask.keep)  # (B, m, d)
        y = block_fn(merged, AttentionMask(keep=info.merged_keep, causal=False))
        if self.layer_residual:
            return h + self.restorer(y - merged, h, info)
        return self.restorer(y, h, info)


# ---------------------------------------------------------------------- the plugin
def base_identity(config: ModelConfig) -> dict[str, Any]:
    """What a plugin records about its base model (and checks when it is loaded)."""
    return {
        "family": config.family,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "source": config.source,
    }


def check_fits(
    plugin_config: PluginConfig, model_config: ModelConfig, where: str = "the plugin"
) -> None:
    """Raise ArtifactError naming every difference between the plugin's base and this model.

    A different ``source`` (e.g. a stage-A plugin trained on the pre-trained checkpoint, put
    on a fine-tuned teacher of it) is allowed, with a log message.
    """
    expected = plugin_config.base_model or {}
    actual = base_identity(model_config)
    labels = {"family": "family", "hidden_size": "hidden size", "num_layers": "layers"}
    diffs = [
        f"{label}: plugin expects {expected[key]!r}, base model has {actual[key]!r}"
        for key, label in labels.items()
        if key in expected and expected[key] != actual[key]
    ]
    if diffs:
        raise ArtifactError(
            f"{where} does not fit this base model ({'; '.join(diffs)}). It was trained for "
            f"{expected.get('source') or 'another model'}: load it onto that model, or train a "
            "plugin for this one (`gearshift plugin train`)."
        )
    if expected.get("source") and expected["source"] != actual["source"]:
        logger.info(
            "%s was trained on %s and is loaded onto %s (same shape)",
            where,
            expected["source"],
            actual["source"],
        )


class Plugin(nn.Module):
    """A compression plugin for one base model: a :class:`PluginLayer` per covered layer.

    ``base`` (a Transformer or its ModelConfig) fixes the hidden size and depth; the config's
    ``base_model`` is filled in from it. :meth:`plan` returns the ForwardPlan to run the base
    model with this plugin.
    """

    def __init__(self, config: PluginConfig, base: Transformer | ModelConfig) -> None:
        super().__init__()
        model_config = base.config if isinstance(base, nn.Module) else base
        if model_config.causal:
            raise ConfigError(
                f"plugins merge neighbouring tokens, so a causal {model_config.family} model would "
                "see future tokens through them; use an encoder (BERT, RoBERTa, ALBERT, DistilBERT)"
            )
        config = PluginConfig.from_dict(config.to_dict())  # a copy
        if config.base_model is not None:
            check_fits(config, model_config)
        config.base_model = base_identity(model_config)
        self.config = config
        self.layers = nn.ModuleDict(
            {
                str(i): PluginLayer(model_config.hidden_size, config)
                for i in config.layer_indices(model_config.num_layers)
            }
        )

    def plan(self) -> ForwardPlan:
        """The ForwardPlan that runs the base model with this plugin (build one per call)."""
        if self.config.placement == "ffn":
            return ForwardPlan(
                ffn_wrap={int(i): layer.compress_ffn for i, layer in self.layers.items()}
            )
        return ForwardPlan(
            block_wrap={int(i): layer.compress_layer for i, layer in self.layers.items()}
        )

    def num_parameters(self) -> int:
        """Parameters the plugin adds to its base model."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ folders
    def save_pretrained(
        self, folder: str | os.PathLike, extra: dict[str, Any] | None = None
    ) -> Path:
        """Save as a plugin folder (atomically); returns its path."""
        return save_plugin(self, folder, extra)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, base: Transformer) -> Plugin:
        """Load a plugin folder for ``base``; see :func:`load_plugin`."""
        return load_plugin(folder, base)


# ---------------------------------------------------------------------- plugin folders
def write_plugin_files(
    plugin: Plugin, folder: str | os.PathLike, extra: dict[str, Any] | None = None
) -> None:
    """Write gearshift.json and plugin.safetensors into the existing ``folder``."""
    folder = Path(folder)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "plugin",
        "config": plugin.config.to_dict(),
        **(extra or {}),
    }
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in plugin.state_dict().items()}
    save_file(state, str(folder / PLUGIN_WEIGHTS_NAME), metadata={"format": "pt"})


def save_plugin(
    plugin: Plugin, folder: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """Save ``plugin`` as a folder (gearshift.json + plugin.safetensors) atomically.

    ``extra`` adds entries to gearshift.json (e.g. how the plugin was trained).
    """
    return write_folder_atomically(folder, lambda tmp: write_plugin_files(plugin, tmp, extra))


def read_plugin_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check a plugin folder's gearshift.json; ArtifactError says what is wrong."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a plugin folder: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    if not isinstance(meta, dict) or meta.get("kind") != "plugin":
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise ArtifactError(
            f"{path} describes a {kind or 'non-gearshift'} folder, not a plugin "
            "(its 'kind' is not 'plugin')"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {meta['format_version']}, newer than this "
            f"gearshift ({FORMAT_VERSION}); upgrade gearshift"
        )
    return meta


def load_plugin(folder: str | os.PathLike, base: Transformer | ModelConfig) -> Plugin:
    """Load the plugin in ``folder`` for ``base``; returns it (eval mode).

    Raises ArtifactError when the plugin was made for another model (family, hidden size or
    depth differ: the message lists each difference) or its files do not match.
    """
    folder = Path(folder)
    meta = read_plugin_meta(folder)
    config = PluginConfig.from_dict(meta.get("config", {}))
    model_config = base.config if isinstance(base, nn.Module) else base
    check_fits(config, model_config, where=f"plugin {folder}")
    plugin = Plugin(config, model_config)
    weights = folder / PLUGIN_WEIGHTS_NAME
    if not weights.is_file():
        raise ArtifactError(f"{folder}: {PLUGIN_WEIGHTS_NAME} is missing")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise ArtifactError(
            f"{weights} cannot be read as safetensors ({exc}); re-save the plugin"
        ) from exc
    expected = plugin.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"{weights} does not fit {CONFIG_NAME}: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}; the two files come from different plugins"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ArtifactError(
                f"{weights}: {key} has shape {tuple(value.shape)}, {CONFIG_NAME} implies "
                f"{tuple(expected[key].shape)}"
            )
    plugin.load_state_dict(state)
    device = (
        next((p.device for p in base.parameters()), None) if isinstance(base, nn.Module) else None
    )
    if device is not None:
        plugin.to(device)
    return plugin.eval()


# ---------------------------------------------------------------------- analytic FLOPs
def plugin_flops(model_config: ModelConfig, plugin_config: PluginConfig, seq_len: int) -> int:
    """Closed-form FLOPs of one example of ``seq_len`` real tokens through the base model with
    the plugin (same convention as :func:`gearshift.measure.analytic_flops`: matmuls only).

    Per covered layer: the frozen part that runs on m' merged vectors instead of n, plus the
    plugin's own matmuls: merger scores 2*m*(k*d)*k, weighted pooling 2*m*k*d, restorer
    2*m*d*r (the half of W_down that reads the merged vector, once per window),
    2*n*d*r (the half that reads each token) and 2*n*r*d (W_up). With the first token kept
    out of merging the adapter still runs on it (its row is then overwritten): that saves a
    copy of the whole sequence, at 4*d*r FLOPs per layer.
    """
    c, p = model_config, plugin_config
    n, d, k = seq_len, c.hidden_size, p.k
    total = analytic_flops(c, n)
    first = p.keep_first_token
    nb = n - 1 if first else n
    m = math.ceil(nb / k)
    mm = m + (1 if first else 0)
    for layer in p.layer_indices(c.num_layers):
        shape = c.layer_shape(layer)
        inner = shape.num_heads * c.head_dim
        total -= 4 * n * d * shape.intermediate_size - 4 * mm * d * shape.intermediate_size
        if p.placement == "layer" and shape.num_heads:
            total -= 8 * n * d * inner - 8 * mm * d * inner  # Q, K, V, O
            total -= 4 * n * n * inner - 4 * mm * mm * inner  # scores and weighted values
        total += plugin_own_flops(p, d, n)
    return total


def plugin_own_flops(plugin_config: PluginConfig, hidden_size: int, seq_len: int) -> int:
    """The matmuls one covered layer's plugin adds for one example of ``seq_len`` tokens
    (merger scores, weighted pooling, restorer; see :func:`plugin_flops`)."""
    p, n, d = plugin_config, seq_len, hidden_size
    k, r = p.k, p.bottleneck
    m = math.ceil((n - 1 if p.keep_first_token else n) / k)
    total = 2 * m * (k * d) * k if p.merge == "learned" else 0
    total += 2 * m * k * d
    if r:
        total += 2 * m * d * r + 2 * n * d * r + 2 * n * r * d
    return total


# ---------------------------------------------------------------------- the plan provider
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_UNSET = object()


class Plugins(PlanProvider):
    """Compression plugins as a plan provider: several loaded plugins, one active per pass.

    The setting value is a loaded plugin's name (None: no plugin). Plugins merge
    neighbouring tokens, so a causal model is refused; each plugin must fit the base
    (family, hidden size, depth). Folder: ``gearshift.json`` (kind "plugins", the names in
    order) and one plugin folder per name.
    """

    kind = "plugins"

    def __init__(self, plugins: dict[str, Plugin] | None = None) -> None:
        super().__init__()
        self.plugins = nn.ModuleDict()
        self._base_config: ModelConfig | None = None
        for name, plugin in (plugins or {}).items():
            self.add(name, plugin)

    def check_fits(self, config: ModelConfig) -> None:
        if config.causal:
            raise ConfigError(
                f"plugins merge neighbouring tokens, so a causal {config.family} model would "
                "see future tokens through them; attach plugins to an encoder only"
            )
        for name, plugin in self.plugins.items():
            check_fits(plugin.config, config, where=f"plugin {name!r}")
        self._base_config = config

    def add(self, name: str, plugin: Plugin) -> None:
        """Add ``plugin`` under ``name`` (letters, digits, - and _)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"plugin name {name!r} is invalid: use letters, digits, '-' and '_'")
        if not isinstance(plugin, Plugin):
            raise ConfigError(f"a plugin must be a Plugin, got {type(plugin).__name__}")
        if self._base_config is not None:
            check_fits(plugin.config, self._base_config, where=f"plugin {name!r}")
        self.plugins[name] = plugin.eval()

    def resolve(self, value: Any) -> str:
        if value not in self.plugins:
            have = ", ".join(self.plugins.keys()) or "none"
            raise ConfigError(f"no plugin named {value!r} is loaded (loaded: {have})")
        return value

    def plan(self, value: str, call: Any) -> ForwardPlan:
        return self.plugins[value].plan()

    def settings(self) -> dict[str, str]:
        return {name: name for name in self.plugins.keys()}

    def describe(self, value: Any) -> str:
        return "no plugin" if value is None else f"plugin {value}"

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Save every plugin as ``folder/<name>/`` plus an index; returns ``folder``."""

        def write(tmp: Path) -> None:
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": "plugins",
                "names": list(self.plugins.keys()),
            }
            for name, plugin in self.plugins.items():
                (tmp / name).mkdir()
                write_plugin_files(plugin, tmp / name)
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))

        return write_folder_atomically(folder, write)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, base: Transformer) -> Plugins:
        """Load a folder written by :meth:`save_pretrained` (or one plugin folder) for ``base``."""
        folder = Path(folder)
        path = folder / CONFIG_NAME
        meta = json.loads(path.read_text()) if path.is_file() else {}
        if meta.get("kind") == "plugin":  # a single plugin folder
            return cls(
                {folder.name if _NAME.match(folder.name) else "plugin": load_plugin(folder, base)}
            )
        if meta.get("kind") != "plugins":
            raise ArtifactError(
                f"{folder} is not a plugins folder (its {CONFIG_NAME} kind is "
                f"{meta.get('kind')!r}): pass a folder written by `gearshift plugin train` or "
                "by a stack"
            )
        return cls({name: load_plugin(folder / name, base) for name in meta["names"]})


# ---------------------------------------------------------------------- the switchable model
class PluginModel(Stack):
    """A frozen base model with several plugins loaded, one active per thread or request:
    a :class:`~gearshift.runtime.stack.Stack` with one :class:`Plugins` provider.

    The active plugin is part of the stack's per-thread setting: :meth:`use_plugin` and the
    :meth:`plugin` context manager change it for the calling thread (or asyncio task) only,
    so threads serving requests each pick their own plugin and switching needs no reload.
    A thread that never chose uses :attr:`default_plugin` (None = the base model alone).

    ``forward(**batch)`` runs the base model with the active plugin's ForwardPlan and returns
    its :class:`~gearshift.runtime.TransformerOutput`. The base model is put in eval mode and
    its parameters are frozen (requires_grad False).
    """

    def __init__(self, base: Transformer, default_plugin: str | None = None) -> None:
        super().__init__(base, {"plugins": Plugins()}, freeze_base=True)
        self._default_name = default_plugin

    @property
    def plugins(self) -> nn.ModuleDict:
        """The loaded plugins by name."""
        return self.providers["plugins"].plugins

    # ------------------------------------------------------------------ plugins
    def add_plugin(self, name: str, plugin: Plugin) -> None:
        """Add ``plugin`` under ``name`` (letters, digits, - and _); checks it fits the base."""
        device = next((p.device for p in self.base.parameters()), None)
        self.providers["plugins"].add(name, plugin)
        if device is not None:
            plugin.to(device)
        if self._default_name == name:
            self.default_plugin = name

    def load_plugin(self, name: str, folder: str | os.PathLike) -> Plugin:
        """Load the plugin folder ``folder`` under ``name``; returns the plugin."""
        plugin = load_plugin(folder, self.base)
        self.add_plugin(name, plugin)
        return plugin

    def remove_plugin(self, name: str) -> None:
        """Forget the plugin ``name``."""
        self._check_name(name)
        del self.plugins[name]

    @property
    def plugin_names(self) -> list[str]:
        return list(self.plugins.keys())

    # ------------------------------------------------------------------ switching
    def _check_name(self, name: str | None) -> None:
        if name is not None:
            self.providers["plugins"].resolve(name)

    @property
    def active_plugin(self) -> str | None:
        """The plugin the calling thread/context uses now (None = the base model alone)."""
        return self.active_setting.get("plugins")

    @property
    def default_plugin(self) -> str | None:
        """The plugin of threads that never chose one (None: the base model alone)."""
        return self.default_setting.get("plugins")

    @default_plugin.setter
    def default_plugin(self, name: str | None) -> None:
        self._check_name(name)
        self.default_setting = {"plugins": name}

    def use_plugin(self, name: str | None) -> None:
        """Use plugin ``name`` (None: no plugin) for the following calls in this thread/context."""
        self._check_name(name)
        self.use(plugins=name)

    @contextmanager
    def plugin(self, name: str | None) -> Iterator[PluginModel]:
        """``with model.plugin("k4"): ...``: use ``name`` inside the block, then switch back."""
        self._check_name(name)
        with self.using(plugins=name):
            yield self

    def plan(self, name: Any = _UNSET) -> ForwardPlan | None:
        """The ForwardPlan of plugin ``name`` (default: the active one); None without plugin."""
        name = self.active_plugin if name is _UNSET else name
        self._check_name(name)
        return None if name is None else self.plugins[name].plan()

    def forward(self, *args: Any, plugin: Any = _UNSET, **batch: Any) -> TransformerOutput:
        """Run the base model with the active plugin (or ``plugin=`` for this call only);
        ``plan=`` (optional) is merged with it under the composition rules."""
        if plugin is not _UNSET:
            self._check_name(plugin)
            batch["setting"] = {"plugins": plugin}
        return super().forward(*args, **batch)
