"""The one wrapper: a base model and an ordered set of plan providers, switchable per call.

A *plan provider* (plugins, exits, step schedules) contributes part of a
:class:`~gearshift.runtime.ForwardPlan` for one forward pass. A :class:`Stack` holds a base
:class:`~gearshift.runtime.Transformer` (any model edit already applied to it: factorized,
pruned, shared, int8) and its providers in attach order. A *setting* says what each provider
does in a pass, e.g. ``{"plugins": "k4", "exits": "entropy:0.3", "steps": 3}``; a provider
missing from the setting (or set to None) is off. The setting is chosen

- per call: ``stack(**batch, setting={...})``;
- per thread (or asyncio task): ``stack.use(...)`` / ``with stack.using(...):``, held in a
  :class:`~gearshift.runtime.setting.ThreadSetting`, so two threads serving requests run two
  operating points on one loaded model with no reload;
- for threads that never chose: :attr:`Stack.default_setting`.

The providers' plans are combined by :meth:`ForwardPlan.merge` (its rules are the
composition rules, docs/compose.md); a provider may also finish the output (an exit
provider assembles each row's logits from the exit it left at).

This module knows no method: providers live in their method packages and subclass
:class:`PlanProvider`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gearshift.errors import ConfigError
from gearshift.runtime.config import ModelConfig
from gearshift.runtime.model import Transformer, TransformerOutput
from gearshift.runtime.plan import ForwardPlan
from gearshift.runtime.setting import ThreadSetting

_UNSET = object()


@dataclass
class Call:
    """What a provider may need to know about the pass it plans: the batch and the base.
    ``state`` is a scratch dict a provider fills in :meth:`PlanProvider.plan` and reads back
    in :meth:`PlanProvider.finish` (one per call, so concurrent calls never share it)."""

    base: Transformer
    batch_size: int
    device: torch.device
    attention_mask: torch.Tensor | None
    state: dict[str, Any] = field(default_factory=dict)


class PlanProvider(nn.Module):
    """A method that changes a forward pass through the plan (not the weights).

    Subclasses set :attr:`kind` (the setting key, e.g. "plugins") and implement
    :meth:`plan`; :meth:`resolve` checks and normalises a setting value (None always means
    "off"); :meth:`finish` may rewrite the pass's output; :meth:`check_fits` refuses a base
    the provider was not made for; :meth:`settings` lists its named operating points;
    :meth:`flops` gives the closed-form cost it changes (see gearshift.compose.flops).
    """

    kind: str = "provider"
    # True: the provider reads and writes the task head itself (plan.run_head False)
    owns_head: bool = False

    def resolve(self, value: Any) -> Any:
        """The normalised setting value (raise ConfigError naming the provider when bad)."""
        return value

    def plan(self, value: Any, call: Call) -> ForwardPlan | None:  # pragma: no cover - abstract
        """The plan part for setting ``value`` (never None here: None means off)."""
        raise NotImplementedError

    def finish(self, value: Any, call: Call, out: TransformerOutput) -> TransformerOutput:
        """Post-process the pass's output (default: unchanged)."""
        return out

    def check_fits(self, config: ModelConfig) -> None:
        """Raise ArtifactError/ConfigError when this provider cannot run on ``config``."""

    def settings(self) -> dict[str, Any]:
        """Named operating points of this provider: ``{label: value}``."""
        return {}

    def describe(self, value: Any) -> str:
        """A short label of ``value`` for tables and logs."""
        return "off" if value is None else f"{self.kind}={value}"


class Stack(nn.Module):
    """A base model with an ordered set of attached plan providers; see the module docstring.

    ``forward(input_ids, attention_mask, token_type_ids, labels, setting=None, plan=None)``
    returns the base's :class:`TransformerOutput` (``exit_step`` set when rows exit early).
    ``plan`` (optional) is one more plan merged last under the same rules (e.g. a training
    wrap). ``freeze_base`` keeps the base in eval mode with frozen parameters (plugins train
    on a frozen model).
    """

    def __init__(
        self,
        base: Transformer,
        providers: Mapping[str, PlanProvider] | None = None,
        default_setting: Mapping[str, Any] | None = None,
        freeze_base: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base, Transformer):
            raise ConfigError(
                f"a Stack wraps a runtime Transformer, got {type(base).__name__}: attach the "
                "providers of a stack to its base (stack.base) instead of nesting stacks"
            )
        self.base = base
        self.freeze_base = freeze_base
        if freeze_base:
            self.base.eval()
            self.base.requires_grad_(False)
        self.providers = nn.ModuleDict()
        self._setting = ThreadSetting("stack_setting", {})
        for name, provider in (providers or {}).items():
            self.attach(provider, name)
        self.default_setting = dict(default_setting or {})
        self.train(base.training)  # a stack of an eval-mode model is in eval mode

    # ------------------------------------------------------------------ views
    @property
    def config(self) -> ModelConfig:
        """The base model's config (measurement code treats a stack like a Transformer)."""
        return self.base.config

    @property
    def head(self):
        return self.base.head

    def train(self, mode: bool = True) -> Stack:
        super().train(mode)
        if self.freeze_base:
            self.base.eval()
        return self

    # ------------------------------------------------------------------ providers
    def attach(self, provider: PlanProvider, name: str | None = None) -> PlanProvider:
        """Attach ``provider`` under ``name`` (default: its kind); returns it. Checks that
        it fits the base and that no attached provider already owns the head."""
        if not isinstance(provider, PlanProvider):
            raise ConfigError(f"attach needs a PlanProvider, got {type(provider).__name__}")
        name = name or provider.kind
        if name in self.providers:
            raise ConfigError(
                f"a provider named {name!r} is attached already ({self.describe_providers()}): "
                "give the new one another name, or detach the old one"
            )
        provider.check_fits(self.base.config)
        if provider.owns_head:
            owner = next((n for n, p in self.providers.items() if p.owns_head), None)
            if owner is not None:
                raise ConfigError(
                    f"{owner} and {name} both apply the task head themselves (early exit): "
                    "a stack takes one exit provider"
                )
        device = next((p.device for p in self.base.parameters()), None)
        if device is not None:
            provider.to(device)
        provider.train(self.training)
        self.providers[name] = provider
        return provider

    def detach(self, name: str) -> PlanProvider:
        """Remove and return the provider ``name``."""
        provider = self._provider(name)
        del self.providers[name]
        return provider

    def _provider(self, name: str) -> PlanProvider:
        if name not in self.providers:
            raise ConfigError(
                f"no provider named {name!r} is attached (attached: {self.describe_providers()})"
            )
        return self.providers[name]

    def describe_providers(self) -> str:
        return ", ".join(self.providers.keys()) or "none"

    # ------------------------------------------------------------------ settings
    def resolve(self, setting: Mapping[str, Any] | None) -> dict[str, Any]:
        """``setting`` checked and normalised by each provider (unknown names refused)."""
        if setting is None:
            return {}
        if not isinstance(setting, Mapping):
            raise ConfigError(
                f"a setting is a mapping {{provider: value}}, got {type(setting).__name__}"
            )
        out = {}
        for name, value in setting.items():
            provider = self._provider(name)
            out[name] = None if value is None else provider.resolve(value)
        return out

    @property
    def default_setting(self) -> dict[str, Any]:
        """The setting of threads that never chose one."""
        return dict(self._setting.default)

    @default_setting.setter
    def default_setting(self, setting: Mapping[str, Any]) -> None:
        self._setting.default = self.resolve(setting)

    @property
    def active_setting(self) -> dict[str, Any]:
        """The setting the calling thread/context uses now."""
        return dict(self._setting.get())

    def use(self, setting: Mapping[str, Any] | None = None, **values: Any) -> None:
        """Use ``setting`` for the following calls of this thread/context (replaces it)."""
        self._setting.set(self.resolve({**(setting or {}), **values}))

    @contextmanager
    def using(self, setting: Mapping[str, Any] | None = None, **values: Any) -> Iterator[Stack]:
        """``with stack.using(plugins="k4"): ...``: that setting inside the block only."""
        with self._setting.using(self.resolve({**(setting or {}), **values})):
            yield self

    def settings(self) -> dict[str, dict[str, Any]]:
        """Named operating points: "full" (every provider off) and each provider's own
        points alone (``{"plugins=k4": {"plugins": "k4"}, ...}``)."""
        out: dict[str, dict[str, Any]] = {"full": {}}
        for name, provider in self.providers.items():
            for label, value in provider.settings().items():
                out[f"{name}={label}"] = {name: value}
        return out

    def describe(self, setting: Mapping[str, Any] | None = None) -> str:
        """A short label of ``setting`` (default: the active one)."""
        setting = self.active_setting if setting is None else self.resolve(setting)
        parts = [self.providers[n].describe(v) for n, v in setting.items() if v is not None]
        return " + ".join(parts) or "full"

    # ------------------------------------------------------------------ forward
    def build_plan(
        self,
        setting: Mapping[str, Any] | None = None,
        call: Call | None = None,
        extra: ForwardPlan | None = None,
    ) -> ForwardPlan:
        """The merged plan of ``setting`` (default: the active one), providers in attach
        order, then ``extra``."""
        setting = self.active_setting if setting is None else self.resolve(setting)
        call = call or Call(self.base, 1, torch.device("cpu"), None)
        plans = []
        for name, provider in self.providers.items():
            value = setting.get(name)
            if value is not None:
                part = provider.plan(value, call)
                if part is not None:
                    part.provider = name
                    plans.append(part)
        if extra is not None:
            plans.append(extra)
        return ForwardPlan.merge(*plans, num_layers=self.base.config.num_layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        setting: Any = _UNSET,
        plan: ForwardPlan | None = None,
        **kwargs: Any,
    ) -> TransformerOutput:
        """Run the base with the providers of ``setting`` (default: the active setting)."""
        setting = self.active_setting if setting is _UNSET else self.resolve(setting)
        call = Call(self.base, input_ids.shape[0], input_ids.device, attention_mask)
        merged = self.build_plan(setting, call, extra=plan)
        call.state["num_steps"] = len(merged.steps if merged.steps is not None else self.base.steps)
        # the head-owning provider computes the loss once logits are assembled
        out = self.base(
            input_ids,
            attention_mask,
            token_type_ids,
            labels=labels if merged.run_head else None,
            plan=merged,
            **kwargs,
        )
        for name, provider in self.providers.items():
            value = setting.get(name)
            if value is not None:
                out = provider.finish(value, call, out)
        if labels is not None and out.loss is None and out.logits is not None:
            out.loss = self.base.task_loss(out.logits, labels)
        return out
