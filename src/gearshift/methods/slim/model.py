"""Multi-exit models: an exit after every layer, batched early exit, and the exits' folder.

:class:`MultiExitModel` wraps a :class:`~gearshift.runtime.Transformer` with a task head.
Layers ``0 .. L-2`` get an :class:`ExitHead` (as in COST-EFF and DeeBERT: ``tanh`` of the
first token's state -> dropout -> linear; ``pooler="dense"`` puts a BERT-pooler-like dense
layer first); the last layer's exit is the model's own head, so a fine-tuned teacher keeps
its full-depth output.

- ``forward_all(batch)``: every exit's logits (training, and recording a dev set once for
  threshold sweeps), plus the hidden states.
- ``forward(...)``: a normal model call (``evaluate``/``predict`` work on it). With an exit
  criterion active (:meth:`use_criterion` / ``with model.criterion(...)``, per thread, like
  plugins), rows whose exit is confident leave the batch and the rest continue; logits are
  the exit's, ``exit_step`` says where each row left. Rows that left never run the head.

Folder: ``gearshift.json`` with ``kind: "multi-exit-model"`` (the model config and the
exits' config) + ``model.safetensors`` (the model's tensors and ``exits.<l>.*``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gearshift.constants import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from gearshift.errors import ArtifactError, ConfigError
from gearshift.runtime.config import ModelConfig
from gearshift.runtime.edits import unique_state
from gearshift.runtime.forms import materialize
from gearshift.runtime.io import folder_kind, read_meta, read_weights, write_folder_atomically
from gearshift.runtime.model import Transformer, TransformerOutput
from gearshift.runtime.modules import AttentionMask
from gearshift.runtime.plan import ForwardPlan
from gearshift.runtime.stack import Call, PlanProvider, Stack

from .config import POOLERS, POOLS, ExitConfig  # noqa: F401
from .criteria import Criterion, parse_criterion
from .modules import ExitHead, mean_of_real_tokens, scale_grad  # noqa: F401

KIND = "multi-exit-model"
EXITS_WEIGHTS_NAME = "exits.safetensors"


@dataclass
class MultiExitOutput:
    """``exit_logits[l]``: (B, C) logits of layer l's exit (the last one is the model's head);
    ``hidden_states[l]``: the output of layer l (``hidden_states[-1]`` is the last layer's)."""

    exit_logits: list[torch.Tensor]
    hidden_states: list[torch.Tensor]
    embeddings: torch.Tensor


_UNSET = object()


class Exits(PlanProvider):
    """Exit heads after every layer as a plan provider (batched early exit).

    Layers ``0 .. L-2`` carry an :class:`ExitHead`; the last layer's exit is the base
    model's own head. The setting value is an exit criterion (:func:`parse_criterion`: a
    threshold, "entropy:0.3", "patience:2", a Criterion); after each step of the pass, rows
    whose exit (the head of the step's last layer) is confident leave the batch, the rest
    continue. So exits work on shared models run in N steps (exit after a step), under
    plugins, and with any solver. ``choices`` are the criteria it offers as operating points.
    Folder: gearshift.json (kind "exits", the exit config, the base it fits) +
    exits.safetensors.
    """

    kind = "exits"
    owns_head = True

    def __init__(
        self,
        config: ModelConfig,
        exit_config: ExitConfig | None = None,
        choices: list[Any] | None = None,
    ) -> None:
        super().__init__()
        kind = config.head.kind
        if kind not in ("classification", "regression"):
            raise ConfigError(
                f"exits need a sequence classification or regression head, not {kind!r}: "
                "load the model with the task's head first"
            )
        self.exit_config = exit_config or ExitConfig()
        self.exit_config.validate()
        self.outputs = 1 if kind == "regression" else config.head.num_labels
        self.hidden_size, self.num_layers = config.hidden_size, config.num_layers
        self.heads = nn.ModuleList(
            ExitHead(config.hidden_size, self.outputs, self.exit_config)
            for _ in range(config.num_layers - 1)
        )
        self.choices = [parse_criterion(c) for c in (choices or [])]

    def check_fits(self, config: ModelConfig) -> None:
        outputs = 1 if config.head.kind == "regression" else config.head.num_labels
        expected = (config.hidden_size, config.num_layers, outputs)
        actual = (self.hidden_size, self.num_layers, self.outputs)
        if expected != actual:
            raise ArtifactError(
                f"exits do not fit this base model: exits expect (hidden size, layers, "
                f"outputs) = {actual}, base model has {expected}; train exits for this model "
                "(`gearshift slim`)"
            )

    def resolve(self, value: Any) -> Criterion:
        return parse_criterion(value)

    def settings(self) -> dict[str, Criterion]:
        return {c.spec: c for c in self.choices}

    def describe(self, value: Any) -> str:
        return "no early exit" if value is None else f"exit {value.describe()}"

    def plan(self, crit: Criterion, call: Call) -> ForwardPlan:
        B = call.batch_size
        state = crit.start(B, call.device)
        slot: list[torch.Tensor | None] = [None]
        call.state["exit_logits"] = slot

        def exit_fn(layer: int, h: torch.Tensor, mask: AttentionMask, rows: torch.Tensor):
            logits = self.heads[layer](h, mask.keep)
            if slot[0] is None:
                slot[0] = logits.new_zeros((B, *logits.shape[1:]))
            leave = crit.decide(layer, logits, rows, state)
            if bool(leave.any()):
                slot[0][rows[leave]] = logits[leave]
            return leave

        return ForwardPlan(exit=exit_fn, run_head=False)

    def finish(self, crit: Criterion, call: Call, out: TransformerOutput) -> TransformerOutput:
        """Rows that ran to the end get the base head; returns logits for every row."""
        slot = call.state["exit_logits"]
        # rows that never left ran the last step: their exit_step is its index
        stayed_mask = out.exit_step == call.state["num_steps"] - 1
        stayed = stayed_mask.nonzero().squeeze(1)
        h = out.last_hidden_state
        if stayed.numel():
            keep_all = call.attention_mask.bool() if call.attention_mask is not None else None
            keep = keep_all[stayed] if keep_all is not None else None
            final = call.base.head(h[stayed], keep)
            if slot[0] is None:
                slot[0] = final.new_zeros((call.batch_size, *final.shape[1:]))
            slot[0][stayed] = final
        out.logits = slot[0]
        return out

    def head_flops(self, config: ModelConfig) -> int:
        """FLOPs of one exit head on one example (the pooled vector: length-free)."""
        d = config.hidden_size
        return (2 * d * d if self.exit_config.pooler == "dense" else 0) + 2 * d * self.outputs

    def exit_of(self, layer: int, h: torch.Tensor, keep: torch.Tensor | None, base) -> torch.Tensor:
        """Logits of layer ``layer``'s exit from that layer's output ``h``."""
        if layer == self.num_layers - 1:
            return base.head(h, keep)
        return self.heads[layer](h, keep)

    def save_pretrained(self, folder: str | os.PathLike, base_config: ModelConfig) -> Path:
        """Save the exit heads as an adapter folder for ``base_config``'s model."""

        def write(tmp: Path) -> None:
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": "exits",
                "exits": asdict(self.exit_config),
                "choices": [c.spec for c in self.choices],
                "base_model": {
                    "family": base_config.family,
                    "hidden_size": base_config.hidden_size,
                    "num_layers": base_config.num_layers,
                    "outputs": self.outputs,
                    "source": base_config.source,
                },
            }
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
            state = {k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}
            save_file(state, str(tmp / EXITS_WEIGHTS_NAME), metadata={"format": "pt"})

        return write_folder_atomically(folder, write)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, base: Transformer) -> Exits:
        """Load an exits folder for ``base`` (refused, naming the difference, when it does
        not fit)."""
        folder = Path(folder)
        meta = json.loads((folder / CONFIG_NAME).read_text())
        if meta.get("kind") != "exits":
            raise ArtifactError(
                f"{folder} is not an exits folder (kind {meta.get('kind')!r}); exits are saved "
                "by a stack or `gearshift stack --exits`"
            )
        want = meta.get("base_model", {})
        got = {
            "family": base.config.family,
            "hidden_size": base.config.hidden_size,
            "num_layers": base.config.num_layers,
        }
        diffs = [
            f"{k}: exits expect {want[k]!r}, base has {v!r}"
            for k, v in got.items()
            if k in want and want[k] != v
        ]
        if diffs:
            raise ArtifactError(f"exits {folder} do not fit this base model ({'; '.join(diffs)})")
        provider = cls(base.config, ExitConfig(**meta.get("exits", {})), meta.get("choices"))
        weights = folder / EXITS_WEIGHTS_NAME
        if not weights.is_file():
            raise ArtifactError(f"{folder}: {EXITS_WEIGHTS_NAME} is missing")
        state = load_file(str(weights))
        expected = provider.heads.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
            raise ArtifactError(
                f"{weights} does not fit {CONFIG_NAME} (its exit heads have other names or "
                "shapes); the two files come from different exits"
            )
        provider.heads.load_state_dict(state)
        return provider.eval()


class MultiExitModel(Stack):
    """A sequence classification/regression model with an exit after every layer: a
    :class:`~gearshift.runtime.stack.Stack` whose ``"exits"`` provider is :class:`Exits`
    (more providers, e.g. plugins or steps, may be attached beside it)."""

    def __init__(self, base: Transformer, config: ExitConfig | None = None) -> None:
        super().__init__(base, {"exits": Exits(base.config, config)})

    @property
    def exits(self) -> nn.ModuleList:
        """The exit heads of layers 0 .. L-2."""
        return self.providers["exits"].heads

    @property
    def exit_config(self) -> ExitConfig:
        return self.providers["exits"].exit_config

    @property
    def num_exits(self) -> int:
        return self.base.config.num_layers

    def exit_of(self, layer: int, h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Logits of layer ``layer``'s exit from that layer's output ``h``."""
        return self.providers["exits"].exit_of(layer, h, keep, self.base)

    # ------------------------------------------------------------------ training view
    def forward_all(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        plan: ForwardPlan | None = None,
        exit_grad_scales: list[float] | None = None,
    ) -> MultiExitOutput:
        """Run every layer and every exit. ``exit_grad_scales[l]`` (optional) scales the
        gradient that exit l's loss sends into the backbone (gradient equilibrium)."""
        out = self.base(
            input_ids,
            attention_mask,
            token_type_ids,
            plan=ForwardPlan.merge(plan, ForwardPlan(run_head=False, provider="exits")),
            output_hidden_states=True,
        )
        keep = attention_mask.bool() if attention_mask is not None else None
        hidden = list(out.hidden_states[1:])
        logits = []
        for layer, h in enumerate(hidden):
            if exit_grad_scales is not None:
                h = scale_grad(h, exit_grad_scales[layer])
            logits.append(self.exit_of(layer, h, keep))
        return MultiExitOutput(logits, hidden, out.hidden_states[0])

    # ------------------------------------------------------------------ inference view
    @property
    def active_criterion(self) -> Criterion | None:
        return self.active_setting.get("exits")

    def use_criterion(self, criterion: Criterion | None) -> None:
        """Exit early by ``criterion`` (None: always run every layer) in this thread/context."""
        self.use({**self.active_setting, "exits": criterion})

    @contextmanager
    def criterion(self, criterion: Criterion | None) -> Iterator[MultiExitModel]:
        with self.using({**self.active_setting, "exits": criterion}):
            yield self

    def forward(self, *args: Any, criterion: Any = _UNSET, **kwargs: Any) -> TransformerOutput:
        """A model call: full depth, or early exit under the active (or given) criterion."""
        if criterion is not _UNSET:
            kwargs["setting"] = {**self.active_setting, "exits": criterion}
        return super().forward(*args, **kwargs)

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self, folder: str | os.PathLike, tokenizer: Any = None, extra: dict | None = None
    ) -> Path:
        return save_multi_exit(self, folder, tokenizer, extra)


def gradient_equilibrium(num_layers: int) -> tuple[list[float], dict[int, float]]:
    """Gradient equilibrium (Li et al., ICCV 2019) for exits after every layer: where layer
    l's output splits into its exit and layer l+1, the exit's gradient is scaled by
    ``1 / (L - l)`` and the deeper path's by ``(L - l - 1) / (L - l)``, so no layer's
    gradient grows with the number of exits above it. Returns (exit scales, {layer: scale
    of the gradient entering layer ``layer`` from its input})."""
    L = num_layers
    exit_scales = [1.0 / (L - l) for l in range(L)]  # noqa: E741
    path_scales = {l + 1: (L - l - 1) / (L - l) for l in range(L - 1)}  # noqa: E741
    return exit_scales, path_scales


def equilibrium_plan(num_layers: int) -> ForwardPlan:
    """A plan whose layer wraps scale the gradient each layer sends back to the one below."""
    _, path = gradient_equilibrium(num_layers)

    def wrap_for(scale: float):
        def wrap(block_fn, h, mask):
            return block_fn(scale_grad(h, scale), mask)

        return wrap

    return ForwardPlan(block_wrap={layer: wrap_for(s) for layer, s in path.items()})


# ---------------------------------------------------------------------- folders
def save_multi_exit(
    model: MultiExitModel,
    folder: str | os.PathLike,
    tokenizer: Any = None,
    extra: dict | None = None,
) -> Path:
    """Save as a gearshift folder of kind "multi-exit-model" (atomically)."""

    def write(tmp: Path) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "config": model.base.config.to_dict(),
            "exits": asdict(model.exit_config),
            **(extra or {}),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        # every tensor once (a shared basis of a factorized base under its first name)
        state = {f"base.{k}": v for k, v in unique_state(model.base).items()}
        state |= {f"exits.{k}": v for k, v in model.exits.state_dict().items()}
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return write_folder_atomically(folder, write)


def load_multi_exit(folder: str | os.PathLike) -> MultiExitModel:
    """Load a folder written by :func:`save_multi_exit`; outputs equal the saved model's."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("kind") != KIND:
        raise ArtifactError(
            f"{folder / CONFIG_NAME} has kind {meta.get('kind')!r}, not {KIND!r}: load a plain "
            "model with gearshift.runtime.load_pretrained and wrap it in MultiExitModel"
        )
    base = Transformer(ModelConfig.from_dict(meta["config"]))
    model = MultiExitModel(base, ExitConfig(**meta.get("exits", {})))
    expected = {f"base.{k}": v for k, v in unique_state(model.base).items()}
    expected |= {f"exits.{k}": v for k, v in model.exits.state_dict().items()}
    state = read_weights(folder, expected)
    base_state = {k[5:]: v for k, v in state.items() if k.startswith("base.")}
    model.base.load_state_dict(base_state, strict=False)  # shared aliases filled by sharing
    materialize(model.base)
    model.exits.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("exits.")})
    return model.eval()


def is_multi_exit_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a model saved by :func:`save_multi_exit`."""
    return folder_kind(folder) == KIND
