"""gearshift serve: an HTTP inference service that shifts gears (operating points of one
model) as its load changes.

- :mod:`gearshift.serve.table`: the gear table (JSON) and its schema checks;
- :mod:`gearshift.serve.gears`: the models loaded once, a gear as a per-call setting;
- :mod:`gearshift.serve.policy`: the controller (replaceable: ``choose(state) -> gear``);
- :mod:`gearshift.serve.batcher`: dynamic batching on one worker thread, bounded queue;
- :mod:`gearshift.serve.app`: the FastAPI app, metrics and status page;
- :mod:`gearshift.serve.build`: ``gearshift gears build`` (measure, write the table);
- :mod:`gearshift.serve.ray_app`: the same app as a Ray Serve deployment.
"""

from gearshift.serve.policy import AdaptivePolicy, FixedPolicy, LoadState, Policy, make_policy
from gearshift.serve.table import Gear, GearTable, GearTableError, read_gear_table

__all__ = [
    "AdaptivePolicy",
    "FixedPolicy",
    "Gear",
    "GearTable",
    "GearTableError",
    "LoadState",
    "Policy",
    "make_policy",
    "read_gear_table",
]
