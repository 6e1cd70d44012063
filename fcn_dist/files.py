"""Atomic file writes: the one way the package writes a file a user or a resume reads.

``atomic_write(path)`` yields a temporary path in the destination's folder; when the block
ends without an exception the file is flushed to disk (fsync), renamed over ``path`` and the
folder entry is synced, so a reader sees the old file or the new one, never half of one, even
after a crash or a power loss. On an exception the temporary file is removed and ``path`` is
untouched. The file gets the user's umask (0644 under umask 022), as ``open()`` would give it:
``tempfile.mkstemp`` would make it 0600 and unreadable to teammates on a shared filesystem.

Hand-written because no dependency offers all three (fsync, umask mode, a path that
writers such as ``safetensors.save_file`` and ``PIL.Image.save`` open themselves).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def fsync_dir(folder: PathLike) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Write ``path`` atomically through a temporary file that the block fills.

    Args:
        path: the destination; its folder is created.

    Yields:
        The temporary file's path (it exists, empty, with the umask's mode); write it by name.

    Raises:
        OSError: the write, fsync or rename failed (disk full, permissions); the temporary
            file is gone and ``path`` is as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask, as open() does
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
