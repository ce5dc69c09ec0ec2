"""Compression plugins (Variator): merge k neighbouring tokens inside a frozen model.

A plugin merges every k consecutive hidden vectors into one (learned weighted pooling), lets
the frozen layer (its FFN, or the whole layer) compute on n/k vectors, and restores n
vectors afterwards (repeat + a small adapter). Plugins of several k load onto one base model
and are switched per request::

    from gearshift.methods.plugins import PluginConfig, PluginModel, train_plugin

    model = PluginModel(teacher)
    model.load_plugin("k4", "runs/plugins/sst2-k4/plugin")
    with model.plugin("k4"):
        logits = model(**batch).logits

See docs/plugins.md.
"""

from .baselines import mean_merging, truncation_plan
from .config import PluginConfig
from .model import (
    Plugin,
    PluginLayer,
    PluginModel,
    base_identity,
    check_fits,
    load_plugin,
    plugin_flops,
    save_plugin,
)
from .modules import MergeInfo, TokenMerger, TokenRestorer

__all__ = [
    "MergeInfo",
    "Plugin",
    "PluginConfig",
    "PluginLayer",
    "PluginModel",
    "TokenMerger",
    "TokenRestorer",
    "base_identity",
    "check_fits",
    "load_plugin",
    "mean_merging",
    "plugin_flops",
    "save_plugin",
    "truncation_plan",
]
