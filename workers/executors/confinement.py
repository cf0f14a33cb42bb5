"""Reading and writing files strictly inside a job's work dir: no `..`, no absolute paths, no symlinks."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
from pathlib import Path

from workers.executors.base import OutputFile

_GLOB_CHARS = set("*?[")


class ConfinementError(Exception):
    pass


def _segments(relative: str) -> list[str]:
    parts = relative.split("/")
    if (
        not relative
        or relative.startswith("/")
        or "\\" in relative
        or "\x00" in relative
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ConfinementError(f"{relative!r} is not a plain relative path inside the work dir")
    return parts


def _open_dir_chain(root: Path, parts: list[str], *, create: bool) -> int:
    """An fd for the parent dir of `parts`, walked one segment at a time with O_NOFOLLOW."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ConfinementError(f"{'/'.join(parts)!r}: {part!r} is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_input(root: Path, relative: str, data: bytes) -> None:
    parts = _segments(relative)
    dir_fd = _open_dir_chain(root, parts, create=True)
    try:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    finally:
        os.close(dir_fd)


def read_output(root: Path, relative: str, *, max_bytes: int) -> bytes:
    parts = _segments(relative)
    dir_fd = _open_dir_chain(root, parts, create=False)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfinementError(f"{relative!r} is a symlink; outputs must be regular files") from None
            raise
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfinementError(f"{relative!r} is not a regular file")
            if info.st_size > max_bytes:
                raise ConfinementError(f"{relative!r} is {info.st_size} bytes; the limit per output is {max_bytes}")
            data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ConfinementError(f"{relative!r} grew past the limit of {max_bytes} bytes")
            return data
    finally:
        os.close(dir_fd)


def collect_outputs(
    root: Path, patterns: list[str], *, max_bytes: int, max_total_bytes: int
) -> tuple[list[OutputFile], list[str]]:
    """Declared outputs (plain paths or globs). Returns the files and a sentence per refusal or miss."""
    files: list[OutputFile] = []
    errors: list[str] = []
    seen: set[str] = set()
    total = 0
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern):
            matches = sorted(glob.glob(pattern, root_dir=root, recursive=True))
            matches = [m for m in matches if not os.path.isdir(os.path.join(root, m))]
        else:
            matches = [pattern] if os.path.lexists(root / pattern) else []
            if not matches:
                errors.append(f"declared output {pattern!r} was not produced")
        for match in matches:
            if match in seen:
                continue
            seen.add(match)
            try:
                data = read_output(root, match, max_bytes=max_bytes)
            except (ConfinementError, OSError) as exc:
                errors.append(f"output {match!r} refused: {exc}" if isinstance(exc, ConfinementError)
                              else f"output {match!r} could not be read: {exc.strerror}")
                continue
            if total + len(data) > max_total_bytes:
                errors.append(f"output {match!r} skipped: outputs would exceed the total limit of {max_total_bytes}")
                continue
            total += len(data)
            files.append(OutputFile(path=match, data=data))
    return files, errors
