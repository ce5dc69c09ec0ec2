"""Slenderized multi-exit models (COST-EFF): prune width, keep depth, exit early in batches.

The package has the file roles every method package has: :mod:`.config` (SlimConfig,
ExitConfig), :mod:`.modules` (ExitHead), :mod:`.model` (how it attaches: the
:class:`Exits` plan provider, :class:`MultiExitModel`, folders, gradient equilibrium),
:mod:`.train` (the pipeline), :mod:`.cli`; and the method's own parts:

- :mod:`.prune`: the width edit (below).
- :mod:`.criteria`: entropy (one threshold or a per-layer schedule) and patience; replayed
  offline on recorded logits with :func:`simulate`.
- :mod:`.prune` (the model edit): first-order Taylor importance, structured pruning, low-rank word
  embedding, target widths from a FLOPs/parameter ratio, the iterative schedule.
- :mod:`.train`: the pipeline teacher -> assistant -> iterative joint pruning -> recovery.
- :mod:`.measure`: score/FLOPs curves from one pass over the dev set.
"""

from .config import ExitConfig, SlimConfig
from .criteria import Criterion, Entropy, Patience, entropy, simulate
from .measure import exit_flops, record_exits, sweep
from .model import (
    Exits,
    MultiExitModel,
    equilibrium_plan,
    gradient_equilibrium,
    is_multi_exit_folder,
    load_multi_exit,
    save_multi_exit,
)
from .modules import ExitHead, scale_grad
from .prune import (
    Importance,
    Widths,
    current_widths,
    factorize_word_embedding,
    model_cost,
    prune,
    schedule,
    select,
    taylor_importance,
    widths_for_ratio,
)
from .train import ExitDistillation, distil_stage, run_slim

__all__ = [
    "Criterion",
    "Entropy",
    "ExitConfig",
    "ExitDistillation",
    "ExitHead",
    "Exits",
    "Importance",
    "MultiExitModel",
    "Patience",
    "SlimConfig",
    "Widths",
    "current_widths",
    "distil_stage",
    "entropy",
    "equilibrium_plan",
    "exit_flops",
    "factorize_word_embedding",
    "gradient_equilibrium",
    "is_multi_exit_folder",
    "load_multi_exit",
    "model_cost",
    "prune",
    "record_exits",
    "run_slim",
    "save_multi_exit",
    "scale_grad",
    "schedule",
    "select",
    "simulate",
    "sweep",
    "taylor_importance",
    "widths_for_ratio",
]
