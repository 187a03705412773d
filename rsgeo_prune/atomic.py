"""Atomic output: files and folders are written under a temporary name beside the target, then renamed.

A crash or an error never leaves a half-written output under the final name, and every output gets
the permissions of a plain file (``0666`` or ``0777`` less the umask: ``0644`` / ``0755`` usually),
whatever its writer created it with. :func:`output_folder` removes a command's output folder when
the command fails before it made anything worth keeping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from .errors import InvalidOption, RSGeoPruneError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The process's umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = _read_umask()


def check_writable(path: str | Path, *, create: bool = True) -> Path:
    """Fail early, before any work, if ``path`` can't be written. With ``create`` the parent folder is
    made now; without, nothing is created (the nearest existing folder above must be writable)."""
    path = Path(path)
    if path.is_dir():
        raise RSGeoPruneError(f"{path}: is a folder; give a file name for the output")
    folder = path.parent
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidOption(
                "out", str(path), f"output folder cannot be created ({exc.strerror}); choose another"
            ) from exc
    else:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise InvalidOption(
                "out", str(path), f"output folder cannot be created ({os.strerror(17)}); choose another"
            )
    if not os.access(folder, os.W_OK):
        raise InvalidOption("out", str(path), "output folder is not writable; choose another")
    return path


def plain_mode(path: str | Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) a plain file's permissions."""
    path = Path(path)
    if path.is_dir():
        for p in path.rglob("*"):
            if not p.is_symlink():
                os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_UMASK)
        os.chmod(path, 0o777 & ~_UMASK)
    elif path.exists():
        os.chmod(path, 0o666 & ~_UMASK)


def _cleanup(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds."""
    path = check_writable(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # keep the suffix: drivers check it
    try:
        yield tmp
        plain_mode(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidOption(
            "out", str(path), f"output cannot be written ({exc.strerror or exc}); choose another"
        ) from exc
    finally:
        _cleanup(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; when the block succeeds it takes the place of
    ``path`` as a whole (``path`` keeps its old content until then; nothing of a failed block remains)."""
    path = Path(path)
    check_writable(path.with_name(f".{path.name}.probe"))  # the parent exists and is writable
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    _cleanup(tmp, old)
    try:
        tmp.mkdir()
        yield tmp
        plain_mode(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidOption(
            "out", str(path), f"output cannot be written ({exc.strerror or exc}); choose another"
        ) from exc
    finally:
        _cleanup(tmp, old)


@contextlib.contextmanager
def output_folder(path: str | Path, *, keep: Callable[[], bool] = lambda: False) -> Iterator[Path]:
    """A command's output folder, made by its first write. When the block fails (an error or Ctrl-C) and
    the folder did not exist before it, the folder (and any parent made for it) is removed again, unless
    ``keep()`` says it holds what a rerun continues from (a saved training state, finished shards)."""
    path = Path(path)
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    existed = top.exists()
    try:
        yield path
    except BaseException:
        if not existed and top.exists() and not keep():
            shutil.rmtree(top, ignore_errors=True)
        raise


__all__ = ["atomic_folder", "atomic_output", "check_writable", "output_folder", "plain_mode"]
