"""User-facing errors.

Every error a user can cause (bad input file, wrong folder, unknown task, mismatched plugin)
is a :class:`GearshiftError` whose message names the problem and the fix. The CLI prints
these without a traceback; anything else is a bug and keeps its traceback.
"""


class GearshiftError(Exception):
    """A problem with the user's input, files or settings; the message says how to fix it."""


class DataError(GearshiftError):
    """A data file or directory is missing, malformed, or does not fit the task."""


class ArtifactError(GearshiftError):
    """A saved gearshift folder (model, plugin, checkpoint) is missing a file or does not fit."""


class ConfigError(GearshiftError):
    """A configuration value is invalid or inconsistent."""
