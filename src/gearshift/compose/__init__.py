"""Composition: any stack of methods on one model, under one rule (docs/compose.md).

- *Model edits* (factorize, slim widths and word rank, parameter sharing, int8) change the
  weights or structure; the result is a plain :class:`~gearshift.runtime.Transformer` whose
  ``ModelConfig`` describes it completely.
- *Plan providers* (plugins, exits, step schedules) contribute part of a
  :class:`~gearshift.runtime.ForwardPlan`; :class:`Stack` (the one wrapper) holds a base and
  its providers, switchable per call and per thread; :meth:`ForwardPlan.merge` combines them.
- A stack is one folder (:func:`save_stack` / :func:`load_stack`, or ``gearshift.load``).
"""

from gearshift.compose.io import is_stack_folder, load_stack, save_stack
from gearshift.runtime.stack import Call, PlanProvider, Stack

__all__ = ["Call", "PlanProvider", "Stack", "is_stack_folder", "load_stack", "save_stack"]
