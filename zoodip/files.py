"""Names that come from users, and writes that never leave a half-written or clobbered file."""

from __future__ import annotations

import os
import re
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


def atomic_write(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` so readers see either nothing or the whole file.

    Without ``overwrite`` an existing file is never replaced, even by a concurrent writer
    (the final step is a hard link, which fails if the name exists).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists: choose another name, or set overwrite to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(
                    f"{path} already exists: choose another name, or set overwrite to replace it"
                ) from None
            except OSError:  # file systems without hard links: best effort, still never clobbers
                if path.exists():
                    raise FileExistsError(f"{path} already exists") from None
                os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def inside(base: Path, path: Path) -> bool:
    """True when ``path`` resolves inside ``base`` (no escaping through '..' or links)."""
    base = Path(base).resolve()
    try:
        Path(path).resolve().relative_to(base)
    except ValueError:
        return False
    return True
