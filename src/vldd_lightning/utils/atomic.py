"""Atomic file writes: a file appears under its final name only when it is complete.

Every writer goes through a temporary file in the same folder followed by ``os.replace``,
which is atomic on POSIX file systems. Write errors (no space, read-only folder) are turned
into an :class:`~vldd_lightning.errors.ArtifactError` that names the path, and the previous
file under the final name, if any, is left untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vldd_lightning.errors import ArtifactError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _explain_os_error(path: Path, error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        hint = "free disk space or point the output to another disk"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "make the folder writable or choose another output folder"
    else:
        hint = "check that the folder exists and is writable"
    return f"failed to write {path}: {error.strerror or error}; {hint}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` and move it to ``path`` on success.

    The caller writes the whole file to the yielded path. On any exception the temporary
    file is removed and ``path`` keeps its previous content.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
    except OSError as error:
        raise ArtifactError(_explain_os_error(final, error)) from error
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp and some writers (safetensors) create 0600 files; use the umask's usual mode
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(_explain_os_error(final, error)) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and publish the result at ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Read a JSON file, raising :class:`ArtifactError` that names ``what`` and the path."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ArtifactError(f"{what} not found: {path}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(
            f"{what} at {path} is corrupt or truncated ({error}); delete it and rerun the "
            "stage that writes it"
        ) from error
