"""Step-size acceleration of parameter-shared models (the ODE view), encoders and decoders.

The file roles of every method package: :mod:`.config` (a step setting: N and the solver),
:mod:`.model` (how it attaches: steps and solvers as a ForwardPlan, the :class:`Steps`
plan provider, :class:`StepModel` switching the number of steps at run time),
:mod:`.cli`; it adds no modules (its edit, parameter sharing, reuses the runtime's blocks),
and its training lives with the edit it trains:

- :mod:`.share` (the model edit): unshared -> fully or partially shared models, and their
  (step-aware) distillation from the unshared model.
- :mod:`.decoder`: a small GPT-2-style decoder trained here; perplexity and generation at
  any number of steps; the step-aware training loss.
"""

from .decoder import (
    collate_blocks,
    decoder_config,
    generate,
    init_weights,
    lm_blocks,
    perplexity,
    step_aware_loss,
    train_tokenizer,
)
from .model import (
    SOLVERS,
    StepModel,
    heun_update,
    layer_evaluations,
    make_steps,
    shared_groups,
    step_plan,
    step_sizes,
    steps_from_sizes,
)
from .share import (
    INITS,
    ShareDistillation,
    distil_shared,
    draw_group_sizes,
    group_layers,
    held_out_fidelity,
    make_shared,
    steps_for_group_sizes,
    steps_for_size,
)

__all__ = [
    "INITS",
    "SOLVERS",
    "ShareDistillation",
    "StepModel",
    "collate_blocks",
    "decoder_config",
    "distil_shared",
    "generate",
    "group_layers",
    "held_out_fidelity",
    "heun_update",
    "init_weights",
    "layer_evaluations",
    "lm_blocks",
    "make_shared",
    "make_steps",
    "perplexity",
    "shared_groups",
    "step_aware_loss",
    "step_plan",
    "step_sizes",
    "draw_group_sizes",
    "steps_for_group_sizes",
    "steps_for_size",
    "steps_from_sizes",
    "train_tokenizer",
]
