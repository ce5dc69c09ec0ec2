"""Attach points: how a method changes one forward pass without patching the runtime.

A :class:`ForwardPlan` is built per call (so two threads can run two different plans on one
model at once) and says:

- ``steps``: the layer loop as a list of :class:`Step` (which parameter block runs, the layer
  index it stands for, its step size). The default is one step of size 1 per layer, which is
  exactly the original model. Parameter-shared models read as an ODE run fewer, larger steps.
- ``update``: the residual update rule ``h <- update(block_fn, h, step)``; the default is
  forward Euler, ``h + a * (block(h) - h)``, which is ``block(h)`` itself when ``a == 1``.
- ``ffn_wrap[layer]``: wraps a layer's feed-forward function (token compression in the FFN).
- ``block_wrap[layer]``: wraps a whole layer (token compression around attention + FFN).
- ``exit``: called after every step; it may return a bool mask of rows that leave the batch
  now (early exit). The loop then continues on the remaining rows only.
- ``run_head``: False skips the task/LM head (a multi-exit model applies its own heads to
  the rows that need them).

Linear layers and the word embedding are ordinary submodules: a method replaces them in
place (low-rank, decoded weights); per-layer widths live in the model config.

Wraps key on the layer whose block *runs*: a step's :attr:`Step.start_layer` (where Euler
evaluates f). In the default loop that is every layer; a shared model run in fewer, larger
steps runs only the step starts, and a wrap on any other layer is refused by
:meth:`ForwardPlan.merge` / :meth:`ForwardPlan.check` (never silently dropped).

Several methods contribute to one pass through :meth:`ForwardPlan.merge` (docs/compose.md):
each plan names its ``provider`` so an impossible pair is refused naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gearshift.errors import ConfigError

# (ffn_fn, x, keep) -> y ; keep is the (B, n) bool mask of real tokens or None
FFNWrap = Callable[
    [Callable[[torch.Tensor], torch.Tensor], torch.Tensor, "torch.Tensor | None"], torch.Tensor
]
# (block_fn, h, attention_mask) -> h ; block_fn(h, attention_mask) runs the layer
BlockWrap = Callable[..., torch.Tensor]
# (layer, h, attention_mask, rows) -> bool mask over the active rows that exit now, or None
ExitFn = Callable[..., "torch.Tensor | None"]


@dataclass(frozen=True)
class Step:
    """One pass through a parameter block in the layer loop."""

    block: int
    layer: int  # the original layer index this step ends at (hooks and exits key on it)
    step_size: float = 1.0
    start: int | None = None  # the layer at the step's start time (None: ``layer``)

    @property
    def start_layer(self) -> int:
        """The layer whose own parameters (per-layer LayerNorms) this step uses: the one at
        its start time, where Euler evaluates f."""
        return self.layer if self.start is None else self.start


def euler_update(
    block_fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, step: Step
) -> torch.Tensor:
    """Forward Euler: ``h + a * f(h)`` with ``f(h) = block(h) - h``; exactly ``block(h)`` at a = 1."""
    out = block_fn(h)
    if step.step_size == 1.0:
        return out
    return h + step.step_size * (out - h)


@dataclass
class ForwardPlan:
    """What one forward pass runs; see the module docstring.

    ``provider`` names the method a plan comes from (for error messages when plans merge).
    """

    steps: list[Step] | None = None
    update: Callable[..., torch.Tensor] = euler_update
    ffn_wrap: dict[int, FFNWrap] = field(default_factory=dict)
    block_wrap: dict[int, BlockWrap] = field(default_factory=dict)
    exit: ExitFn | None = None
    run_head: bool = True  # False: return hidden states only (a method applies its own heads)
    provider: str = "plan"

    @classmethod
    def merge(cls, *plans: ForwardPlan | None, num_layers: int | None = None) -> ForwardPlan:
        """One plan from several providers' plans (None entries are skipped). The rules:

        - ``steps`` and a non-Euler ``update`` come from at most one provider (the same one
          may give both): two step schedules or two solvers cannot both run;
        - wraps combine per layer: at most one FFN wrap and one block wrap per layer (two
          token-merging wraps on one layer would merge already merged vectors); a layer's
          block wrap runs outside its FFN wrap;
        - at most one ``exit`` criterion;
        - ``run_head`` is the AND of all (any provider that applies its own heads wins).

        Raises ConfigError naming both providers and why when two plans cannot run together,
        and (given ``num_layers`` or merged ``steps``) when a wrap keys a layer no step runs.
        """
        plans = [p for p in plans if p is not None]
        out = cls(provider="+".join(p.provider for p in plans) or "plan")
        steps_from = update_from = exit_from = None
        for p in plans:
            if p.steps is not None:
                if steps_from is not None:
                    raise ConfigError(
                        f"{steps_from.provider} and {p.provider} both set the layer loop "
                        "(steps): a pass can follow one step schedule only; attach one of them"
                    )
                steps_from, out.steps = p, list(p.steps)
            if p.update is not euler_update:
                if update_from is not None and p.update is not update_from.update:
                    raise ConfigError(
                        f"{update_from.provider} and {p.provider} both set the residual update "
                        "(solver): choose one solver"
                    )
                update_from, out.update = p, p.update
            for kind in ("ffn_wrap", "block_wrap"):
                merged = getattr(out, kind)
                for layer, wrap in getattr(p, kind).items():
                    if layer in merged:
                        other = merged[layer].__gearshift_provider__
                        raise ConfigError(
                            f"{other} and {p.provider} both wrap layer {layer}'s "
                            f"{'feed-forward' if kind == 'ffn_wrap' else 'block'}: two "
                            "token-merging wraps on one layer would merge merged vectors; "
                            "put them on different layers"
                        )
                    merged[layer] = _tagged(wrap, p.provider)
            if p.exit is not None:
                if exit_from is not None:
                    raise ConfigError(
                        f"{exit_from.provider} and {p.provider} both give an exit criterion: "
                        "a pass has one early-exit rule; attach one of them"
                    )
                exit_from, out.exit = p, p.exit
            out.run_head = out.run_head and p.run_head
        out.check(num_layers, steps_provider=steps_from.provider if steps_from else None)
        return out

    def check(self, num_layers: int | None = None, steps_provider: str | None = None) -> None:
        """Raise ConfigError when a wrap keys a layer that no step of this plan runs (a large
        step skips it) or that does not exist."""
        if self.steps is not None:
            runs = {s.start_layer for s in self.steps}
        elif num_layers is not None:
            runs = set(range(num_layers))
        else:
            return
        for kind in ("ffn_wrap", "block_wrap"):
            wraps = getattr(self, kind)
            lost = sorted(set(wraps) - runs)
            if lost:
                who = sorted({getattr(wraps[i], "__gearshift_provider__", "a wrap") for i in lost})
                schedule = (
                    f"the layer loop of {steps_provider or 'this plan'} runs the blocks of "
                    f"layers {sorted(runs)} only"
                )
                raise ConfigError(
                    f"{', '.join(who)} wraps layer(s) {lost}, but {schedule}: those wraps would "
                    f"never run. Use a plugin on layers {sorted(runs)} (e.g. `--layers "
                    f"{','.join(map(str, sorted(runs)))}`), or run the model in steps that "
                    "start at the wrapped layers"
                )


def _tagged(wrap: Callable, provider: str) -> Callable:
    """``wrap`` with the name of the provider it came from (for merge errors)."""
    if getattr(wrap, "__gearshift_provider__", None) == provider:
        return wrap

    def tagged(*args, **kwargs):
        return wrap(*args, **kwargs)

    tagged.__gearshift_provider__ = provider
    tagged.__wrapped__ = wrap
    return tagged


def default_steps(layer_to_block: list[int]) -> list[Step]:
    """One step of size 1 per layer: the model as it was trained."""
    return [Step(block=b, layer=i) for i, b in enumerate(layer_to_block)]
