"""Where files can hurt: reading what a user hands us, and the places we are told to write.

- `read_regular`: a regular file only (a FIFO would block forever, /dev/zero never ends), and at most
  `max_bytes` of it, checked before reading and while reading (a file may grow in between).
- `output_dir` / `output_file`: an --out of the wrong kind is a one-line error, not a traceback.
- `write_atomic` (and `write_json`, `write_text`): written to a temp file beside the target (`.NAME.*.tmp`),
  then renamed onto it: a crash never leaves half a file.
- `user_cache`: where fmnist keeps what it fetched or unpacked ($FMNIST_CACHE_DIR, else the platform's).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import platformdirs

from fmnist.core import errors


def user_cache() -> Path:
    return Path(os.environ.get("FMNIST_CACHE_DIR") or platformdirs.user_cache_dir("fmnist"))


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path`; InputError (TooLarge over `max_bytes`) otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    except OSError as exc:
        raise errors.InputError(f"{path}: cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise errors.InputError(f"{path}: not a regular file (a directory, device, pipe or socket)")
        if info.st_size > max_bytes:
            raise errors.TooLarge(f"{path}: {info.st_size:,} bytes, over the limit of {max_bytes:,}")
        try:
            raw = handle.read(max_bytes + 1)
        except OSError as exc:
            raise errors.InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(raw) > max_bytes:
        raise errors.TooLarge(f"{path}: grew past the limit of {max_bytes:,} bytes while being read")
    return raw


def output_dir(path: Path) -> Path:
    """`path` as a directory to write into, created if needed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise errors.OutputError(f"{path} is a file: give a directory (a new or an existing one)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.OutputError(f"{path}: cannot create the directory ({exc.strerror})") from None
    return path


def output_file(path: Path, example: str) -> Path:
    """`path` as a file to write (its directory created if needed); a directory there is refused."""
    path = Path(path)
    if path.is_dir():
        raise errors.OutputError(f"{path} is a directory: give a file name, e.g. {path / example}")
    output_dir(path.parent)
    return path


def file_mode() -> int:
    """What open() gives a new file: 0o666 less the process's umask (mkstemp's temp files are 0o600)."""
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, write) -> Path:
    """Call write(temp_path), then rename the temp file onto `path`, with the permissions open() would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a directory that takes no files: name the file asked for, not the temp file
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, say: the same
        if exc.filename not in (tmp, Path(tmp)):
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_json(path: Path, value) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))
