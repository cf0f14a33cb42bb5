"""Reading and writing files strictly inside a job's work dir: no `..`, no absolute paths, no symlinks.

Every walk starts from a descriptor of the work dir itself, opened with O_NOFOLLOW (`open_root`): a CLI that
replaces its work dir with a symlink after we opened it cannot point us anywhere else."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from executors.base import OutputFile

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


Root = Path | int  # the work dir: a descriptor from `open_root`, or a path opened that way for the call


def open_root(path: Path) -> int:
    """A descriptor of the directory `path` itself, refusing a symlink in its place."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ConfinementError(f"the work dir {str(path)!r} is a symlink or not a directory") from None
        raise


def same_directory(root_fd: int, path: Path) -> bool:
    """Is `path` still the directory `root_fd` was opened on (not replaced, not a symlink now)?"""
    try:
        now = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    opened = os.fstat(root_fd)
    return stat.S_ISDIR(now.st_mode) and (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


@contextlib.contextmanager
def _root_fd(root: Root) -> Iterator[int]:
    if isinstance(root, int):
        yield root
        return
    fd = open_root(root)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_dir_chain(root: Root, parts: list[str], *, create: bool) -> int:
    """An fd for the parent dir of `parts`, walked one segment at a time with O_NOFOLLOW."""
    fd = os.dup(root) if isinstance(root, int) else open_root(root)
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


def write_input(root: Root, relative: str, data: bytes) -> None:
    parts = _segments(relative)
    dir_fd = _open_dir_chain(root, parts, create=True)
    try:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    finally:
        os.close(dir_fd)


def read_output(root: Root, relative: str, *, max_bytes: int) -> bytes:
    parts = _segments(relative)
    dir_fd = _open_dir_chain(root, parts, create=False)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfinementError(f"{relative!r} is a symlink; outputs must be regular files") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise ConfinementError(f"{relative!r} is not a regular file")
        with os.fdopen(fd, "rb") as handle:
            if info.st_size > max_bytes:
                raise ConfinementError(f"{relative!r} is {info.st_size} bytes; the limit per output is {max_bytes}")
            data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ConfinementError(f"{relative!r} grew past the limit of {max_bytes} bytes")
            return data
    finally:
        os.close(dir_fd)


MAX_GLOB_MATCHES = 1000
MAX_WALKED_ENTRIES = 100_000


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over relative POSIX paths: `*` and `?` stay inside one segment, `**/` spans any depth."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end]
            out.append("[" + ("^" + re.escape(body[1:]) if body.startswith("!") else re.escape(body)) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def is_glob(pattern: str) -> bool:
    return bool(_GLOB_CHARS & set(pattern))


def missing_outputs(patterns: list[str], collected: Iterable[str]) -> list[str]:
    """The declared outputs nothing was collected for: a plain path that is not among `collected`, a glob that
    matched none of them. A file the run wrote but that was refused (a symlink, over a size limit) counts as
    missing too: what the task asked for is not there."""
    paths = set(collected)
    missing = []
    for pattern in patterns:
        if is_glob(pattern):
            regex = glob_regex(pattern)
            found = any(regex.match(path) for path in paths)
        else:
            found = pattern in paths
        if not found:
            missing.append(pattern)
    return missing


def glob_files(root: Root, pattern: str) -> tuple[list[str], bool]:
    """Files under `root` matching `pattern`, walking by descriptors without following symlinks (a CLI may leave
    `a -> .` loops behind) and skipping hidden entries, as glob does. Bounded in entries walked and matches."""
    with _root_fd(root) as root_fd:
        return _glob(root_fd, glob_regex(pattern))


def _glob(root_fd: int, regex: re.Pattern[str]) -> tuple[list[str], bool]:
    matches: list[str] = []
    walked = 0
    for dirpath, dirnames, filenames, _ in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        relative_dir = os.path.normpath(dirpath)
        for name in sorted(filenames):
            walked += 1
            if name.startswith("."):
                continue
            relative = name if relative_dir == "." else f"{relative_dir}/{name}"
            if regex.match(relative):
                matches.append(relative)
                if len(matches) >= MAX_GLOB_MATCHES:
                    return sorted(matches), True
        if walked > MAX_WALKED_ENTRIES:
            return sorted(matches), True
    return sorted(matches), False


def collect_outputs(
    root: Root, patterns: list[str], *, max_bytes: int, max_total_bytes: int
) -> tuple[list[OutputFile], list[str]]:
    """Declared outputs (plain paths or globs). Returns the files and a sentence per refusal or miss."""
    with _root_fd(root) as root_fd:
        return _collect(root_fd, patterns, max_bytes=max_bytes, max_total_bytes=max_total_bytes)


def _exists(root_fd: int, relative: str) -> bool:
    try:
        os.stat(relative, dir_fd=root_fd, follow_symlinks=False)
    except (OSError, ValueError):
        return False
    return True


def _utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _collect(root_fd: int, patterns: list[str], *, max_bytes: int,
             max_total_bytes: int) -> tuple[list[OutputFile], list[str]]:
    files: list[OutputFile] = []
    errors: list[str] = []
    seen: set[str] = set()
    total = 0
    for pattern in patterns:
        if is_glob(pattern):
            matches, truncated = glob_files(root_fd, pattern)
            if truncated:
                errors.append(f"pattern {pattern!r} matched more than {MAX_GLOB_MATCHES} files; the rest were skipped")
        else:
            matches = [pattern] if _exists(root_fd, pattern) else []
            if not matches:
                errors.append(f"declared output {pattern!r} was not produced")
        for match in matches:
            if match in seen:
                continue
            seen.add(match)
            if not _utf8(match):  # os.fwalk gives undecodable bytes as surrogates: no file name we can store
                errors.append(f"output {match.encode(errors='surrogateescape')!r} skipped: its name is not UTF-8")
                continue
            try:
                data = read_output(root_fd, match, max_bytes=max_bytes)
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
