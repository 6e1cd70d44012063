"""Atomic file writes: the one way the package writes a file a user or a resume reads.

``atomic_write(path)`` yields a temporary path in the destination's folder; when the block
ends without an exception the file is flushed to disk (fsync), renamed over ``path`` and the
folder entry is synced, so a reader sees the old file or the new one, never half of one, even
after a crash or a power loss. On an exception the temporary file is removed and ``path`` is
untouched. The file gets the user's umask (0644 under umask 022), as ``open()`` would give it:
``tempfile.mkstemp`` would make it 0600 and unreadable to teammates on a shared filesystem.

Hand-written because no dependency offers all three (fsync, umask mode, a path that
writers such as ``safetensors.save_file`` and ``PIL.Image.save`` open themselves).

Also the rule that no command replaces a file it did not create (``refuse_overwrites``, run
before anything is written) and the mark that lets a rerun recognise its own images
(``image_mark``, ``has_image_mark``). docs/DESIGN.md, "Nothing of the user's is replaced".
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


# Never replacing what the user made: a command lists its output paths first and refuses before writing any.

MARK = "fcn_dist"
"""What images fcn_dist writes carry (a PNG ``Software`` text chunk, a JPEG comment), so that a rerun
may replace its own earlier outputs and nothing else."""


class OverwriteError(ValueError):
    """Writing would replace an input or a file the program did not write; the message names it and the fix."""


def image_mark(prog: str, image_format: str) -> dict:
    """``PIL.Image.save`` keyword arguments that mark an image as written by ``prog``.

    Args:
        prog: the command (``fcn-predict``, ``fcn-eval``).
        image_format: ``PNG`` (a ``Software`` text chunk) or ``JPEG`` (a comment).
    """
    if image_format == "JPEG":
        return {"comment": f"{MARK} {prog}"}
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", f"{MARK} {prog}")
    return {"pnginfo": info}


def has_image_mark(path: PathLike) -> bool:
    """Whether ``path`` is an image that fcn_dist wrote (``image_mark``); False for anything else or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:  # reads the header only: text chunks before the pixels, the JPEG comment
            text = getattr(img, "text", {}).get("Software", "") if img.format == "PNG" else img.info.get("comment", b"")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # not an image we can read: not ours
        return False
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return text.startswith(MARK + " ")


def refuse_overwrites(outputs: list[Path], inputs: list[Path], overwrite: bool, ours,
                      prog: str, flag: str = "--output", input_dirs: tuple[Path, ...] = ()) -> None:
    """Check a command's output paths before it writes any of them.

    Refused always: an output that is one of ``inputs`` (the same file, through any path or
    link) or an existing file under one of ``input_dirs``. Refused unless ``overwrite``: an
    existing output that ``ours(path)`` does not recognise as this program's.

    Args:
        outputs: every file the command will write.
        inputs: the files it reads.
        overwrite: the user passed ``--overwrite``.
        ours: ``path -> bool``, True for a file this program wrote earlier.
        prog: the command, for the message.
        flag: the option that chose the outputs.
        input_dirs: folders whose files are all inputs (a data root).

    Raises:
        OverwriteError: one line naming the first refused file (and how many more) and the fix.
    """
    def same(a: Path, b: Path) -> bool:
        try:
            return os.path.samefile(a, b)
        except OSError:
            return False

    existing = [p for p in outputs if os.path.lexists(p)]
    folders = [d.resolve() for d in input_dirs]
    replaced_inputs = [p for p in existing if any(same(p, i) for i in inputs)
                       or any(d in Path(p).resolve().parents for d in folders)]
    if replaced_inputs:
        more = f" (and {len(replaced_inputs) - 1} more)" if len(replaced_inputs) > 1 else ""
        raise OverwriteError(f"{replaced_inputs[0]}{more} is an input of {prog} and would be replaced by its output; "
                             f"choose another {flag} (--overwrite never replaces an input)")
    foreign = [p for p in existing if not overwrite and not ours(p)]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OverwriteError(f"{foreign[0]}{more} exists and was not written by {prog}; choose another {flag}, "
                             "or pass --overwrite to replace it")
