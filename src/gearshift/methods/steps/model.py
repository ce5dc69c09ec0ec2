"""Shared layers as an ODE solver: fewer, larger steps through the same block.

A model whose consecutive layers share one parameter block computes, layer by layer,
``h_{l+1} = Block(h_l) = h_l + f(h_l)`` with ``f(h) = Block(h) - h``: forward Euler with
step 1 on ``dh/dt = f(h)``, over the depth horizon ``T = L``. The same horizon can be
covered with fewer, larger steps ``h <- h + a * f(h)``; layer compute falls by the factor a.

Time runs from 0 to L (the number of layers). A step of size ``a`` starting at time ``t``
evaluates the block that layer ``floor(t)`` uses (Euler evaluates f at the start of the
interval), so step sizes need not be equal, need not divide the depth, and may cross the
border between two shared groups. ``Step.layer`` is the last layer the step covers
(``ceil(t + a) - 1``): exits and per-layer hooks key on it.

Solvers (the plan's ``update``):

- ``euler``: ``h + a * f(h)``. With a = 1 it is exactly ``Block(h)``: the original model.
- ``heun`` (second order, two block evaluations per step, a comparison):
  ``g = h + a f(h)``; ``h + a/2 (f(h) + f(g))``. Not exact at a = 1.

Post-LN blocks (BERT, ALBERT, MiniLM): the residual branch there contains the LayerNorms,
``Block(h) = LN2(x + FFN(x))`` with ``x = LN1(h + Attn(h))``, so ``f(h) = Block(h) - h`` is
not a pure residual function of a continuous-depth model; ``h + a f(h)`` extrapolates
between two normalised states and leaves the LayerNorm's output manifold for a > 1. This
is the reading the method's description asks for, and an approximation; pre-LN blocks
(GPT-2) are the exact residual form ``h + Attn(LN h) + FFN(LN ...)``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from gearshift.constants import CONFIG_NAME, FORMAT_VERSION
from gearshift.errors import ArtifactError, ConfigError
from gearshift.runtime.config import ModelConfig
from gearshift.runtime.io import write_folder_atomically
from gearshift.runtime.model import Transformer, TransformerOutput
from gearshift.runtime.plan import ForwardPlan, Step, euler_update
from gearshift.runtime.stack import PlanProvider, Stack

from .config import SOLVERS, StepSetting, parse_step_setting

_EPS = 1e-9


def shared_groups(layer_to_block: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of consecutive layers on one block: ``[(block, first_layer, num_layers), ...]``."""
    groups: list[tuple[int, int, int]] = []
    for layer, block in enumerate(layer_to_block):
        if groups and groups[-1][0] == block:
            b, first, n = groups[-1]
            groups[-1] = (b, first, n + 1)
        else:
            groups.append((block, layer, 1))
    return groups


def steps_from_sizes(layer_to_block: Sequence[int], sizes: Sequence[float]) -> list[Step]:
    """The steps for explicit step sizes, which must be > 0 and sum to the depth."""
    depth = len(layer_to_block)
    sizes = [float(a) for a in sizes]
    if not sizes or any(not a > 0 for a in sizes):
        raise ConfigError(f"step sizes {sizes} must be a non-empty list of positive numbers")
    if abs(sum(sizes) - depth) > 1e-6:
        raise ConfigError(
            f"step sizes {sizes} sum to {sum(sizes):g}, but they must cover the model's depth "
            f"of {depth} layers exactly (for N equal steps use n_steps={len(sizes)})"
        )
    steps, t = [], 0.0
    for a in sizes:
        start = min(int(math.floor(t + _EPS)), depth - 1)
        end = min(max(int(math.ceil(t + a - _EPS)) - 1, start), depth - 1)
        steps.append(Step(block=layer_to_block[start], layer=end, step_size=a, start=start))
        t += a
    return steps


def step_sizes(layer_to_block: Sequence[int], n_steps: int) -> list[float]:
    """``n_steps`` step sizes covering the depth, equal within each shared group.

    Each run of layers sharing a block gets a number of steps proportional to its length
    (largest remainders, at least one each), so no step crosses a group border. A fully
    shared 6-layer model at N = 4 runs 4 steps of 1.5; an unshared model at N = L runs its
    layers unchanged.
    """
    groups = shared_groups(layer_to_block)
    depth = len(layer_to_block)
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigError(f"n_steps={n_steps!r} must be a positive integer")
    if n_steps < len(groups):
        raise ConfigError(
            f"{n_steps} step(s) cannot cover {len(groups)} groups of shared layers (each group "
            f"needs one step at least): use n_steps >= {len(groups)}, or share more layers"
        )
    if n_steps > depth and len(groups) == depth:
        raise ConfigError(
            f"n_steps={n_steps} exceeds the depth {depth} of an unshared model: its layers "
            "cannot be split into smaller steps meaningfully; use n_steps <= depth"
        )
    quotas = [n * n_steps / depth for _, _, n in groups]
    counts = [max(1, int(math.floor(q))) for q in quotas]
    while sum(counts) > n_steps:  # the max(1, ..) floors overshot: take from the largest
        i = max(range(len(counts)), key=lambda j: (counts[j] - quotas[j], counts[j]))
        counts[i] -= 1
    order = sorted(range(len(groups)), key=lambda j: quotas[j] - counts[j], reverse=True)
    for i in order[: n_steps - sum(counts)]:
        counts[i] += 1
    sizes: list[float] = []
    for (_, _, n), c in zip(groups, counts):
        sizes += [n / c] * c
    return sizes


def make_steps(
    config: ModelConfig | Sequence[int],
    n_steps: int | None = None,
    sizes: Sequence[float] | None = None,
) -> list[Step]:
    """The layer loop for ``n_steps`` equal-within-group steps, or explicit ``sizes``."""
    layer_to_block = config.layer_to_block if isinstance(config, ModelConfig) else list(config)
    if (n_steps is None) == (sizes is None):
        raise ConfigError("give exactly one of n_steps and sizes")
    if sizes is None:
        sizes = step_sizes(layer_to_block, n_steps)
    return steps_from_sizes(layer_to_block, sizes)


def heun_update(
    block_fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, step: Step
) -> torch.Tensor:
    """Heun's method (explicit trapezoid): two block evaluations per step."""
    a = step.step_size
    f1 = block_fn(h) - h
    g = h + a * f1
    f2 = block_fn(g) - g
    return h + 0.5 * a * (f1 + f2)


def step_plan(
    config: ModelConfig | Sequence[int],
    n_steps: int | None = None,
    sizes: Sequence[float] | None = None,
    solver: str = "euler",
    base: ForwardPlan | None = None,
) -> ForwardPlan:
    """A ForwardPlan that runs the model in the given steps with ``solver``; ``base`` (other
    providers' wraps and exits) is merged in under the composition rules."""
    if solver not in SOLVERS:
        raise ConfigError(f"solver {solver!r} is unknown: use one of {', '.join(SOLVERS)}")
    plan = ForwardPlan(
        steps=make_steps(config, n_steps, sizes),
        update=heun_update if solver == "heun" else euler_update,
        provider="steps",
    )
    return plan if base is None else ForwardPlan.merge(plan, base)


def layer_evaluations(plan_steps: Sequence[Step], solver: str = "euler") -> int:
    """Block evaluations per forward pass (the layer compute), for reporting."""
    return len(plan_steps) * (2 if solver == "heun" else 1)


# ---------------------------------------------------------------------- the plan provider
class Steps(PlanProvider):
    """Step schedules as a plan provider: the setting is a number of steps N (equal within
    each shared group; see :func:`step_sizes`) and a solver. ``choices`` (optional) are the
    operating points it offers (e.g. the step counts a step-aware model was trained for).
    It has no weights; its folder records the choices."""

    kind = "steps"

    def __init__(self, choices: Sequence[Any] = ()) -> None:
        super().__init__()
        self.choices = [parse_step_setting(c) for c in choices]
        self._config: ModelConfig | None = None

    def check_fits(self, config: ModelConfig) -> None:
        self._config = config
        for c in self.choices:
            self._plan(c, config)

    def resolve(self, value: Any) -> StepSetting:
        setting = parse_step_setting(value)
        if self._config is not None:
            self._plan(setting, self._config)  # raises for N the model cannot run
        return setting

    @staticmethod
    def _plan(setting: StepSetting, config: ModelConfig) -> ForwardPlan:
        return step_plan(config, setting.n_steps or config.num_layers, solver=setting.solver)

    def plan(self, value: StepSetting, call: Any) -> ForwardPlan:
        return self._plan(value, call.base.config)

    def settings(self) -> dict[str, StepSetting]:
        return {str(c): c for c in self.choices}

    def describe(self, value: Any) -> str:
        return "own layer loop" if value is None else f"{value} steps"

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """A small folder: kind "steps" and the choices."""

        def write(tmp: Path) -> None:
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": "steps",
                "choices": [str(c) for c in self.choices],
            }
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))

        return write_folder_atomically(folder, write)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, base: Transformer) -> Steps:
        meta = json.loads((Path(folder) / CONFIG_NAME).read_text())
        if meta.get("kind") != "steps":
            raise ArtifactError(f"{folder} is not a steps folder (kind {meta.get('kind')!r})")
        return cls(meta.get("choices", []))


# ---------------------------------------------------------------------- run-time switch
class StepModel(Stack):
    """A model whose number of steps (and solver) is a run-time setting: a
    :class:`~gearshift.runtime.stack.Stack` with one :class:`Steps` provider.

    Like :class:`~gearshift.methods.plugins.PluginModel`, the setting is per thread (or
    asyncio task): :meth:`use_steps` and the :meth:`steps` context manager change it for the
    calling thread only, between batches, with no reload. ``None`` steps = the model's own
    layer loop (one step of size 1 per layer).
    """

    def __init__(self, model: Transformer, n_steps: int | None = None, solver: str = "euler"):
        super().__init__(model, {"steps": Steps()})
        self.default_setting = {"steps": self._value(n_steps, solver)}

    @property
    def model(self) -> Transformer:
        """The wrapped model (the stack's base)."""
        return self.base

    def _value(self, n_steps: int | None, solver: str) -> StepSetting | None:
        if n_steps is None and solver == "euler":
            return None
        return StepSetting(n_steps, solver)

    @property
    def setting(self) -> tuple[int | None, str]:
        """(n_steps, solver) in use for the calling thread/context."""
        value = self.active_setting.get("steps")
        return (None, "euler") if value is None else (value.n_steps, value.solver)

    def use_steps(self, n_steps: int | None, solver: str = "euler") -> None:
        """Run the following calls of this thread/context in ``n_steps`` steps."""
        self.use(steps=self._value(n_steps, solver))

    @contextmanager
    def steps(self, n_steps: int | None, solver: str = "euler") -> Iterator[StepModel]:
        """``with model.steps(3): ...``: three steps inside the block, then back."""
        with self.using(steps=self._value(n_steps, solver)):
            yield self

    def plan(self) -> ForwardPlan | None:
        value = self.active_setting.get("steps")
        return None if value is None else Steps._plan(value, self.base.config)

    def forward(self, *args: Any, **batch: Any) -> TransformerOutput:
        setting = self.resolve(batch["setting"]) if "setting" in batch else self.active_setting
        value = setting.get("steps")
        if value is not None and value.solver == "heun" and batch.get("use_cache"):
            raise ConfigError(
                "the Heun solver cannot decode with a key/value cache (its second evaluation "
                "would need a cache of its own): use solver='euler' for generation"
            )
        return super().forward(*args, **batch)
