"""Names that come from users, and writes that never leave a half-written or clobbered file."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Windows device names: a file called e.g. "con.safetensors" cannot be opened there
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def check_name(name: str, what: str = "token_name") -> str:
    """Return ``name`` if it is safe as a file name and as a prompt word, else raise ValueError.

    Names are refused rather than silently changed: the user types the same name into prompts
    (``embedding:<name>``), so what is saved must be exactly what they typed.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} is empty: give a short name such as 'my-dog'")
    if name != name.strip():
        raise ValueError(f"{what} {name!r} has leading or trailing spaces: remove them")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(name)} characters long: use at most {MAX_NAME_LENGTH}")
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name:
        raise ValueError(f"{what} {name!r} looks like a path: use a plain name without '/', '\\' or '..'")
    if not _NAME.fullmatch(name) or name.endswith("."):
        raise ValueError(
            f"{what} {name!r} has characters that are not allowed: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit and not ending with '.' (spaces would split the prompt word)"
        )
    if name.split(".")[0].lower() in _RESERVED:
        raise ValueError(f"{what} {name!r} is a reserved device name on Windows: pick another name")
    return name


class SaveError(OSError):
    """A write that failed, with a message naming the target and what to do; nothing was left behind."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


_FULL = {errno.ENOSPC, errno.EDQUOT} if hasattr(errno, "EDQUOT") else {errno.ENOSPC}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _explain(target: Path, e: OSError) -> SaveError:
    """The OS error as a sentence about ``target`` (the OS names the temp file, users know the target)."""
    folder = target.parent
    if e.errno in _FULL:
        advice = f"the disk holding {folder} is full: free some space, then try again"
    elif e.errno in _DENIED:
        advice = (
            f"the folder {folder} is not writable (permissions, or a read-only disk): make it writable, "
            "or point ComfyUI's folder elsewhere (extra_model_paths.yaml)"
        )
    else:
        advice = f"{e.strerror or e}: check the folder {folder}, then try again"
    return SaveError(f"could not write {target}: {advice}. Nothing was written.", e.errno)


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} already exists: choose another name, or set overwrite to replace it")


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new temp file beside ``path``, flushed to disk. Tests replace this to simulate a full disk."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name exists, even when another writer just took it
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError:  # file systems without hard links: best effort (a writer racing between the check and
        # the rename can be replaced; os.rename replaces on POSIX)
        if path.exists():
            raise _exists_error(path) from None
        os.rename(tmp, path)


def write_together(files: list[tuple[Path, bytes, bool]]) -> list[Path]:
    """Write ``(path, data, overwrite)`` files as one unit: afterwards all of them are there, or none
    has changed. Readers never see a half-written file.

    All data goes to temp files first (a full disk fails there, before any target is touched); then
    the temps are moved into place; if one move fails, the ones already moved are undone (a replaced
    file comes back from a hard-linked backup). A file without ``overwrite`` is never replaced.
    Errors name the target and say what to do (``SaveError``, an OSError), or are FileExistsError.
    """
    targets = [(Path(p), data, bool(ow)) for p, data, ow in files]
    for path, _, overwrite in targets:
        if not overwrite and path.exists():
            raise _exists_error(path)
    temps: list[Path] = []
    backups: dict[Path, Path] = {}
    done: list[Path] = []
    current = targets[0][0] if targets else None
    try:
        for path, data, _ in targets:
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
            temps.append(_write_temp(path, data))
        for (path, _, overwrite), tmp in zip(targets, temps):
            current = path
            if overwrite and path.exists():
                backup = path.with_name(f".{path.name}.{os.getpid()}.{id(tmp)}.bak")
                try:
                    os.link(path, backup)
                except OSError:  # no hard links here: a copy is as good a backup
                    shutil.copy2(path, backup)
                backups[path] = backup
            _publish(tmp, path, overwrite)
            done.append(path)
    except BaseException as e:
        for path in reversed(done):  # undo: both or neither
            with contextlib.suppress(OSError):
                if path in backups:
                    os.replace(backups.pop(path), path)
                else:
                    path.unlink()
        if isinstance(e, OSError) and not isinstance(e, (FileExistsError, SaveError)) and current is not None:
            raise _explain(current, e) from e
        raise
    finally:
        for p in (*temps, *backups.values()):
            with contextlib.suppress(OSError):
                if p.exists():
                    p.unlink()
    return [p for p, _, _ in targets]


def atomic_write(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` so readers see either nothing or the whole file.

    Without ``overwrite`` an existing file is never replaced, even by a concurrent writer
    (the final step is a hard link, which fails if the name exists).
    """
    return write_together([(Path(path), data, overwrite)])[0]


def inside(base: Path, path: Path) -> bool:
    """True when ``path`` resolves inside ``base`` (no escaping through '..' or links)."""
    base = Path(base).resolve()
    try:
        Path(path).resolve().relative_to(base)
    except ValueError:
        return False
    return True


def first_lines(e: BaseException, lines: int = 1, limit: int = 200) -> str:
    """The start of an exception's text for a message: its first ``lines`` non-empty lines, at most ``limit``
    characters (a library's error can run to pages), or its type when it has no text."""
    text = [x.strip() for x in str(e).splitlines() if x.strip()]
    return "; ".join(text[:lines])[:limit] if text else type(e).__name__
