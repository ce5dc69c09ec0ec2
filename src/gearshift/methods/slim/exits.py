"""Older import path of :mod:`gearshift.methods.slim.model` (the exits provider, multi-exit
models and their folders); the config and modules live in ``config.py`` and ``modules.py``."""

from .config import POOLERS, POOLS, ExitConfig  # noqa: F401
from .model import *  # noqa: F401,F403
from .model import (  # noqa: F401
    EXITS_WEIGHTS_NAME,
    KIND,
    Exits,
    MultiExitModel,
    MultiExitOutput,
    equilibrium_plan,
    gradient_equilibrium,
    is_multi_exit_folder,
    load_multi_exit,
    save_multi_exit,
)
from .modules import ExitHead, mean_of_real_tokens, scale_grad  # noqa: F401
