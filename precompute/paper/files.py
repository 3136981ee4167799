"""Reading the files of an untrusted folder (``lookups import-paper PATH``): only regular files
inside PATH, bounded in size and nesting, numbers finite where the authors' data has no other.

Every read goes through :class:`Folder`. A file is refused, with one line naming it, when:

- its path (after following symlinks, ``..`` and the names other files give, such as
  ``prior_filename``) resolves outside PATH;
- it is not a regular file (a FIFO, a device, a socket, a directory named ``*.json``): it is
  opened with ``O_NONBLOCK`` and checked with ``fstat`` before a byte is read, so a FIFO never
  blocks;
- it is larger than :data:`MAX_FILE_BYTES` (far above the authors' largest file, ~15 MB);
- it is JSON nested deeper than :data:`MAX_DEPTH` (the authors' files nest at most 6 levels):
  checked on the raw text before parsing, so no parser recursion happens;
- it holds ``NaN`` or ``Infinity`` (or a number that overflows to it) in a field the importer
  reads as a number: :data:`NONFINITE` marks such values and :func:`check_number` names the
  file and the field.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path

from context_lookups.precompute.core.errors import LookupsError
from context_lookups.precompute.core.jsontext import nesting_depth

MAX_FILE_BYTES = 256 * 1024 * 1024  # bytes: ~17x the authors' largest file the importer reads
MAX_DEPTH = 64  # JSON nesting levels (the authors' files: at most 6)


class PaperFormatError(LookupsError):
    """A file of the folder is not in the authors' format, or may not be read (the message
    names the file and the first field or property that does not fit)."""


class NonFinite(str):
    """A ``NaN`` / ``Infinity`` / ``-Infinity`` literal of a JSON file (kept as its text, so
    that a field check can say which value it was)."""


def _constant(name: str) -> NonFinite:
    return NonFinite(name)


def check_number(value, where: str, field: str) -> float:
    """``value`` as a finite float.

    Raises:
        PaperFormatError: a NaN / infinite value (``where`` and ``field`` name it) or not a
            number.
    """
    if isinstance(value, NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
        raise PaperFormatError(f"{where}: field {field!r} is {value} (not a finite number); the "
                               f"authors' data has only finite values there.")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PaperFormatError(f"{where}: field {field!r} should be a number, got {type(value).__name__}.")
    return float(value)


class Folder:
    """The folder PATH of ``lookups import-paper``: every file read is resolved inside it.

    Args:
        root: the folder (``experiment_data``); symlinks in its own path are resolved once.
    """

    def __init__(self, root: Path | str):
        self.root = Path(os.path.realpath(root))

    def rel(self, path: Path | str) -> str:
        """``path`` relative to the folder (for messages and provenance)."""
        p = Path(path)
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def inside(self, path: Path | str) -> Path:
        """``path`` (relative to the folder, or absolute) resolved, symlinks followed.

        Raises:
            PaperFormatError: it resolves outside the folder.
        """
        p = Path(path)
        real = Path(os.path.realpath(p if p.is_absolute() else self.root / p))
        if real != self.root and self.root not in real.parents:
            raise PaperFormatError(f"{self.rel(path)}: resolves to {real}, outside {self.root}; only "
                                   f"files inside the folder are read.")
        return real

    def child(self, folder: str, name: str) -> Path | None:
        """The file ``folder/name`` that another file names (``prior_filename``, a
        ``classify_filepath``): its path inside the folder, or None when no such entry exists.

        Raises:
            PaperFormatError: the name leaves its folder (``/``, ``..``) or resolves outside.
        """
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            raise PaperFormatError(f"{folder}: a file names {name!r} as its input, which is not a "
                                   f"file name in {folder}/ (the authors' names have no '/' or '..').")
        p = self.root / folder / name
        if not os.path.lexists(p):
            return None
        self.inside(p)
        return p

    def read_bytes(self, path: Path | str) -> bytes:
        """The bytes of a regular file inside the folder, at most :data:`MAX_FILE_BYTES`.

        Raises:
            PaperFormatError: outside the folder, not a regular file, too large, unreadable.
        """
        real = self.inside(path)
        rel = self.rel(path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            kind = "a directory" if exc.errno == errno.EISDIR else exc.strerror
            raise PaperFormatError(f"{rel}: cannot be read ({kind}); only regular files are read.") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                        else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                        else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
                raise PaperFormatError(f"{rel}: is {kind}, not a regular file; only regular files are read.")
            if st.st_size > MAX_FILE_BYTES:
                raise PaperFormatError(f"{rel}: {st.st_size:,} bytes, above the importer's limit of "
                                       f"{MAX_FILE_BYTES:,} (the authors' largest file is ~15 MB).")
            chunks, total = [], 0
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                total += len(b)
                if total > MAX_FILE_BYTES:  # grew while being read
                    raise PaperFormatError(f"{rel}: more than {MAX_FILE_BYTES:,} bytes, above the "
                                           f"importer's limit.")
                chunks.append(b)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def load_json(self, path: Path | str, data: bytes | None = None):
        """A JSON file of the folder, parsed: depth checked first, ``NaN``/``Infinity`` kept as
        :class:`NonFinite` (refused by :func:`check_number` where a number is read).

        Raises:
            PaperFormatError: unreadable (see :meth:`read_bytes`), nested deeper than
                :data:`MAX_DEPTH`, not UTF-8, or not JSON (e.g. truncated).
        """
        rel = self.rel(path)
        raw = self.read_bytes(path) if data is None else data
        return loads(raw, rel)

    def lines(self, path: Path | str) -> list[tuple[int, object]]:
        """A JSONL file: ``[(line number, parsed value)]`` (blank lines skipped), each line
        checked as :meth:`load_json` checks a file.

        Raises:
            PaperFormatError: as :meth:`load_json`, naming the line.
        """
        rel = self.rel(path)
        out = []
        for i, line in enumerate(self.read_bytes(path).split(b"\n"), 1):
            if line.strip():
                out.append((i, loads(line, f"{rel} line {i}")))
        return out


def loads(raw: bytes, where: str):
    """JSON text ``raw`` parsed with the checks of :meth:`Folder.load_json` (``where`` names it).

    Raises:
        PaperFormatError: too deep, not UTF-8 or not JSON.
    """
    depth = nesting_depth(raw, MAX_DEPTH)
    if depth > MAX_DEPTH:
        raise PaperFormatError(f"{where}: JSON nested more than {MAX_DEPTH} levels deep (the authors' "
                               f"files nest at most 6); not read.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PaperFormatError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    try:
        return json.loads(text, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        what = "truncated" if exc.pos >= len(text.rstrip()) else "not JSON"
        raise PaperFormatError(f"{where}: {what} ({exc.msg} at line {exc.lineno}, column {exc.colno}; "
                               f"{len(raw):,} bytes).") from None
