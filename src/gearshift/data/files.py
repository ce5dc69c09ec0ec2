"""Finding and opening data files, with errors that say which path and which setting to fix."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from gearshift.errors import DataError


def find_file(folders: Sequence[Path], names: Sequence[str]) -> Path | None:
    """Return the first ``folder / name`` that is an existing file, trying folders in order
    and, within a folder, names in order; None when there is none."""
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


@contextmanager
def open_text(path: Path, encoding: str = "utf-8") -> Iterator[TextIO]:
    """Open ``path`` for reading text and yield the file object.

    Missing files, folders given as files, unreadable files and bytes that are not valid in
    ``encoding`` all become a DataError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path} is a folder, not a data file")
    try:
        with path.open(encoding=encoding, newline="") as handle:
            yield handle
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid {encoding} text ({exc.reason} at byte {exc.start}); "
            "save the file as UTF-8"
        ) from exc
    except PermissionError as exc:
        raise DataError(f"cannot read {path}: permission denied") from exc


def dataset_folders(data_dir: Path | None, *parts: str) -> list[Path]:
    """Return the folders searched for one data set, in order.

    With ``data_dir``: ``data_dir`` itself, ``data_dir/<parts...>`` and ``data_dir/<last part>``
    (so the data set's own folder or the data root may be given). Without:
    ``<data root>/<parts...>`` when a data root is found.
    """
    from gearshift import paths

    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        return [data_dir, data_dir.joinpath(*parts), data_dir / parts[-1]]
    root = paths.data_root()
    return [root.joinpath(*parts)] if root is not None else []
