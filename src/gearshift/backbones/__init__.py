"""Model families: one small file each. Importing this package registers them all."""

from gearshift.backbones import albert, bert, distilbert, gpt2, roberta  # noqa: F401
from gearshift.backbones.base import Backbone, families, for_model_type, register

__all__ = ["Backbone", "families", "for_model_type", "register"]
