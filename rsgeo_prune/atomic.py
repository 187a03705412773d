"""Atomic file output: write to a temporary file beside the target, then rename.

A crash or an error never leaves a half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import InvalidOption, RSGeoPruneError


def check_writable(path: str | Path) -> Path:
    """Create the parent folder of ``path`` if needed; fail early, before any work, if it can't be written."""
    path = Path(path)
    if path.is_dir():
        raise RSGeoPruneError(f"{path}: is a folder; give a file name for the output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidOption("out", str(path), f"output folder cannot be created ({exc.strerror}); choose another") from exc
    if not os.access(path.parent, os.W_OK):
        raise InvalidOption("out", str(path), "output folder is not writable; choose another")
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds."""
    path = check_writable(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # keep the suffix: drivers check it
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidOption("out", str(path), f"output cannot be written ({exc.strerror or exc}); choose another") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()
