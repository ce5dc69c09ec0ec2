"""Older import path of :mod:`gearshift.methods.steps.model` (steps and solvers, the
``Steps`` plan provider, :class:`StepModel`); step settings live in ``config.py``."""

from .config import SOLVERS, StepSetting, parse_step_setting  # noqa: F401
from .model import *  # noqa: F401,F403
from .model import (  # noqa: F401
    StepModel,
    Steps,
    heun_update,
    layer_evaluations,
    make_steps,
    shared_groups,
    step_plan,
    step_sizes,
    steps_from_sizes,
)
