"""Output folders and files that never cost the user anything they had.

The data-safety rule every command follows: a command deletes or renames only what it
created. A folder a command writes carries a small marker (``.hilt-output``, JSON with
the command's *kind*); an existing folder is written into only when it is empty, is
marked with the same kind, or is recognised as that kind's own layout (folders made
before the marker existed). Anything else is refused with one line naming the folder and
the fix, before any work starts.

Files are written beside their target and renamed into place, so a kill or a full disk
leaves the old file or the new one, never half of one; ENOSPC and EACCES become one-line
user errors that name the path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hilt.core.errors import UserError

MARKER = ".hilt-output"
# Files any folder may hold without making it someone else's (editors, file managers).
_HARMLESS = {".DS_Store", "Thumbs.db", MARKER}


# OS errors that are the user's to fix (a full disk, a folder that cannot be written), not bugs.
USER_OS_ERRNOS = (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT)


def as_user_error(err: OSError, path: Path | str) -> UserError | None:
    """The one-line user error for an OS error the user can fix, or None for any other (a bug)."""
    if err.errno not in USER_OS_ERRNOS:
        return None
    return UserError(os_error_message(err, err.filename or path))


def os_error_message(err: OSError, path: Path | str, action: str = "write") -> str:
    """One line for an OS error while writing: what failed, where, and the fix."""
    if err.errno == errno.ENOSPC:
        return f"cannot {action} {path}: no space left on the device; free some space and run again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot {action} {path}: permission denied; choose a folder you can write to"
    return f"cannot {action} {path}: {err.strerror or err}; check the path and run again"


def _marker_kind(folder: Path) -> str | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def foreign_entries(folder: Path) -> list[str]:
    """Top-level entries of ``folder`` other than the harmless ones (the marker, .DS_Store...)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in _HARMLESS)


def check_output_dir(path: Path, kind: str, flag: str, recognise: Callable[[Path], bool] | None = None,
                     hint: str = "") -> None:
    """Refuse ``path`` as a ``kind`` output folder unless it is new, empty, or already ``kind``'s.

    Args:
        path: the folder the command is about to write.
        kind: what the command writes there ("dataset", "evaluation", "training-job", ...).
        flag: the flag that named it, for the message (``--out``).
        recognise: says whether an unmarked folder is this kind's own older output.
        hint: what a valid existing folder would be, for the message.

    Raises:
        UserError: when ``path`` is a file, or a folder that holds other things.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pass a folder path (nothing was changed)")
    if path.is_dir():
        entries = foreign_entries(path)
        ours = _marker_kind(path) == kind or (recognise is not None and recognise(path))
        if entries and not ours:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise UserError(
                f"{flag} {path} already holds files hilt did not write there ({shown}); "
                f"pass a new or empty folder{' or ' + hint if hint else ''} (nothing was changed)")


def claim_output_dir(path: Path, kind: str, flag: str, recognise: Callable[[Path], bool] | None = None,
                     hint: str = "") -> Path:
    """``check_output_dir``, then create the folder and mark it as ``kind``'s. Returns it, resolved."""
    path = Path(path)
    check_output_dir(path, kind, flag, recognise, hint)
    try:
        path.mkdir(parents=True, exist_ok=True)
        mark(path, kind)
    except OSError as err:
        raise UserError(os_error_message(err, path)) from None
    return path.resolve()


def mark(folder: Path, kind: str) -> None:
    """Write the marker that says this folder is a ``kind`` output of hilt."""
    marker = folder / MARKER
    if _marker_kind(folder) != kind:
        marker.write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")


def umask_mode(directory: bool = True) -> int:
    """The permissions a new file or folder gets under the user's umask."""
    current = os.umask(0)
    os.umask(current)
    return (0o777 if directory else 0o666) & ~current


def make_staging_dir(target: Path) -> Path:
    """A hidden folder beside ``target`` to build it in, with normal (umask) permissions.

    ``mkdtemp`` makes 0700 folders; a dataset renamed into place from one would be
    unreadable to the user's group, unlike every other folder they make.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    staging.chmod(umask_mode())
    return staging


def replace_dir(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` folder to ``target``, replacing an older one atomically.

    The caller has checked that ``target`` (if any) is its own kind and holds nothing else.
    """
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def json_with_keys(*keys: str) -> Callable[[bytes], bool]:
    """A recogniser for ``check_output_file``: a JSON object holding every one of ``keys``."""

    def recognise(raw: bytes) -> bool:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return False
        return isinstance(data, dict) and all(key in data for key in keys)

    return recognise


def check_output_file(path: Path, flag: str, *recognisers: Callable[[bytes], bool], what: str = "") -> None:
    """Refuse to overwrite an existing file unless one of ``recognisers`` says hilt wrote it (the same
    kind of output: a request, a pipeline definition); a folder at ``path`` is refused too.

    Raises:
        UserError: naming the flag, the file and the fix; nothing is changed.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass a file path (nothing was changed)")
    if not path.exists():
        return
    try:
        with open(path, "rb") as handle:
            raw = handle.read(64 << 20)
    except OSError as err:
        raise UserError(os_error_message(err, path, "read")) from None
    if not any(recognise(raw) for recognise in recognisers):
        raise UserError(f"{flag} {path} already exists and is not {what or 'a file this command wrote'}; pass a new "
                        "path, or move that file away yourself (nothing was changed)")


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it (never half a file).

    Raises:
        UserError: on ENOSPC, EACCES and other OS errors, naming the path; the
            temporary file is removed.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(raw)
        tmp.chmod(umask_mode(directory=False))
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UserError(os_error_message(err, path)) from None
    return path


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (model weights do not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text_file(path: Path, flag: str) -> str:
    """A UTF-8 text file a flag names (a labeling config, a prompts file), or one line saying why not."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{flag} {path} is a folder; pass the file") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{flag} {path}: not UTF-8 text (offset {err.start}); re-save it as UTF-8") from None
    except OSError as err:
        raise UserError(os_error_message(err, path, "read")) from None
