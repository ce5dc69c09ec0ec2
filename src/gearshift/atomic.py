"""Atomic writes: a file or a folder appears whole under its final name, or not at all.

Everything gearshift saves (model folders, checkpoints, results files) goes through here.
The temporary file or folder lives beside the target (same filesystem, so the final rename
is atomic) and is named ``.<name>.tmp-*``; a folder being replaced is first moved aside as
``.<name>.old-*``. Results get the permissions any file the user writes would get (the
umask's), not the owner-only 0600/0700 of ``mkstemp``, ``mkdtemp`` and safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _mode(bits: int) -> int:
    """``bits`` under the process umask (read without changing it for longer than a call)."""
    umask = os.umask(0)
    os.umask(umask)
    return bits & ~umask


def _side_name(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def replace_directory(src: Path, final: Path) -> None:
    """Move the complete folder ``src`` to ``final``, replacing any existing ``final``.

    POSIX cannot rename a folder over a non-empty one, so the old folder is first moved
    aside (``.<name>.old-*``) and deleted after the new one is in place.
    """
    src, final = Path(src), Path(final)
    old = None
    if final.exists():
        old = _side_name(final, "old")
        os.replace(final, old)
    os.replace(src, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _ordinary_permissions(folder: Path) -> None:
    """Give ``folder`` and everything under it the umask's permissions: ``mkdtemp`` and some
    writers (safetensors' ``save_file``) create owner-only ones. gearshift folders hold data
    only."""
    files, dirs = _mode(0o666), _mode(0o777)
    os.chmod(folder, dirs)
    for root, subdirs, names in os.walk(folder):
        for d in subdirs:
            os.chmod(os.path.join(root, d), dirs)
        for n in names:
            path = os.path.join(root, n)
            if not os.path.islink(path):
                os.chmod(path, files)


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``final`` when the block succeeds.

    If the block raises, the temporary folder is deleted and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _ordinary_permissions(tmp)
        replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and one rename; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, _mode(0o666))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 1) -> Path:
    """Write ``data`` as JSON (and a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")
