"""Inputs written and outputs read strictly inside the work dir: no `..`, no absolute paths, no symlinks."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from executors.base import OutputFile
from executors.confinement import ConfinementError, collect_outputs, write_input

LIMITS = {"max_bytes": 1024, "max_total_bytes": 4096}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.md").write_text("outside secret")
    return folder


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- write_input -----------------------------------------------------------------------------------------


def test_write_input_creates_parents_and_writes_exact_bytes_private(root: Path) -> None:
    write_input(root, "docs/specs/brief.md", b"\x00brief\xff")

    assert (root / "docs/specs/brief.md").read_bytes() == b"\x00brief\xff"
    assert stat.S_IMODE((root / "docs/specs/brief.md").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "docs").stat().st_mode) == 0o700


@pytest.mark.parametrize("relative", [
    "../x", "/etc/x", "a/../../x", "a/../x", "./x", "a//x", "a/", "", ".", "..", "x\x00y", "a\\..\\x", "dir\\x",
])
def test_write_input_refuses_paths_that_are_not_plain_and_relative(relative: str, root: Path,
                                                                    tmp_path: Path) -> None:
    with pytest.raises(ConfinementError, match="is not a plain relative path inside the work dir"):
        write_input(root, relative, b"data")

    assert _tree(root) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_write_input_refuses_a_parent_dir_that_is_a_symlink_pointing_outside(root: Path, outside: Path) -> None:
    (root / "docs").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ConfinementError, match="'docs' is a symlink or not a directory"):
        write_input(root, "docs/new.md", b"data")

    assert _tree(outside) == ["secret.md"]


def test_write_input_refuses_a_deeper_symlinked_parent(root: Path, outside: Path) -> None:
    (root / "a").mkdir()
    (root / "a" / "b").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ConfinementError, match="'b' is a symlink or not a directory"):
        write_input(root, "a/b/c/new.md", b"data")

    assert _tree(outside) == ["secret.md"]


def test_write_input_never_follows_or_overwrites_an_existing_symlink(root: Path, outside: Path) -> None:
    (root / "brief.md").symlink_to(outside / "secret.md")

    with pytest.raises(FileExistsError):
        write_input(root, "brief.md", b"overwritten?")

    assert (outside / "secret.md").read_text() == "outside secret"


def test_write_input_refuses_a_file_where_a_directory_is_needed(root: Path) -> None:
    write_input(root, "docs", b"a file")

    with pytest.raises(ConfinementError, match="'docs' is a symlink or not a directory"):
        write_input(root, "docs/a.md", b"data")

    assert _tree(root) == ["docs"]


# -- collect_outputs: single paths -----------------------------------------------------------------------


def test_declared_outputs_are_collected_with_exact_bytes_in_pattern_order(root: Path) -> None:
    (root / "reports").mkdir()
    (root / "reports/out.md").write_bytes(b"# report\n")
    (root / "result.json").write_bytes(b"{}")

    files, errors = collect_outputs(root, ["result.json", "reports/out.md", "missing.txt"], **LIMITS)

    assert files == [OutputFile(path="result.json", data=b"{}"), OutputFile(path="reports/out.md", data=b"# report\n")]
    assert errors == ["declared output 'missing.txt' was not produced"]


def test_a_symlink_output_pointing_outside_is_refused_unread(root: Path) -> None:
    (root / "out.txt").symlink_to("/etc/passwd")

    files, errors = collect_outputs(root, ["out.txt"], **LIMITS)

    assert files == []
    assert errors == ["output 'out.txt' refused: 'out.txt' is a symlink; outputs must be regular files"]


def test_an_output_inside_a_symlinked_dir_is_refused(root: Path, outside: Path) -> None:
    (root / "reports").symlink_to(outside, target_is_directory=True)

    files, errors = collect_outputs(root, ["reports/secret.md", "reports/*.md"], **LIMITS)

    assert files == []
    assert errors == ["output 'reports/secret.md' refused: 'reports/secret.md': 'reports' is a symlink or not a "
                      "directory"]  # the glob's match is the same path: refused once


@pytest.mark.parametrize("pattern", ["/etc/passwd", "../outside/secret.md", "reports/../../outside/secret.md"])
def test_an_output_path_leaving_the_work_dir_is_refused_unread(pattern: str, root: Path, outside: Path) -> None:
    (root / "reports").mkdir()

    files, errors = collect_outputs(root, [pattern], **LIMITS)

    assert files == []
    assert errors == [f"output {pattern!r} refused: {pattern!r} is not a plain relative path inside the work dir"]


def test_an_output_over_the_per_file_limit_is_refused(root: Path) -> None:
    (root / "big.bin").write_bytes(b"x" * 11)
    (root / "ok.bin").write_bytes(b"y" * 10)

    files, errors = collect_outputs(root, ["big.bin", "ok.bin"], max_bytes=10, max_total_bytes=100)

    assert files == [OutputFile(path="ok.bin", data=b"y" * 10)]
    assert errors == ["output 'big.bin' refused: 'big.bin' is 11 bytes; the limit per output is 10"]


def test_outputs_past_the_total_limit_are_skipped(root: Path) -> None:
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / name).write_bytes(b"1234")
    (root / "d.txt").write_bytes(b"12")

    files, errors = collect_outputs(root, ["a.txt", "b.txt", "c.txt", "d.txt"], max_bytes=10, max_total_bytes=10)

    assert [f.path for f in files] == ["a.txt", "b.txt", "d.txt"]
    assert errors == ["output 'c.txt' skipped: outputs would exceed the total limit of 10"]


def test_a_directory_or_fifo_declared_as_output_is_refused(root: Path) -> None:
    (root / "dir").mkdir()
    os.mkfifo(root / "pipe")  # opening it must not block

    files, errors = collect_outputs(root, ["dir", "pipe"], **LIMITS)

    assert files == []
    assert errors == ["output 'dir' refused: 'dir' is not a regular file",
                      "output 'pipe' refused: 'pipe' is not a regular file"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_refusing_a_directory_output_leaks_no_file_descriptor(root: Path) -> None:
    (root / "reports").mkdir()
    before = _open_fds()

    for _ in range(20):
        collect_outputs(root, ["reports"], **LIMITS)

    assert _open_fds() == before


# -- collect_outputs: globs ------------------------------------------------------------------------------


def test_a_glob_collects_matching_regular_files_only(root: Path, outside: Path) -> None:
    (root / "reports/sub").mkdir(parents=True)
    (root / "reports/a.md").write_bytes(b"A")
    (root / "reports/b.md").write_bytes(b"B")
    (root / "reports/c.txt").write_bytes(b"C")
    (root / "reports/sub/deep.md").write_bytes(b"D")
    (root / "reports/folder.md").mkdir()
    (root / "reports/link.md").symlink_to(outside / "secret.md")

    files, errors = collect_outputs(root, ["reports/*.md"], **LIMITS)

    assert files == [OutputFile(path="reports/a.md", data=b"A"), OutputFile(path="reports/b.md", data=b"B")]
    assert errors == ["output 'reports/link.md' refused: 'reports/link.md' is a symlink; outputs must be regular "
                      "files"]


def test_a_recursive_glob_collects_regular_files_at_every_depth(root: Path) -> None:
    (root / "sub/deep").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"1")
    (root / "sub/mid.txt").write_bytes(b"2")
    (root / "sub/deep/low.txt").write_bytes(b"3")
    (root / "sub/deep/other.md").write_bytes(b"4")
    (root / "sub/dir.txt").mkdir()

    files, errors = collect_outputs(root, ["**/*.txt"], **LIMITS)

    assert files == [OutputFile(path="sub/deep/low.txt", data=b"3"), OutputFile(path="sub/mid.txt", data=b"2"),
                     OutputFile(path="top.txt", data=b"1")]
    assert errors == []


def test_overlapping_patterns_collect_a_file_once(root: Path) -> None:
    (root / "a.txt").write_bytes(b"1")

    files, errors = collect_outputs(root, ["a.txt", "*.txt", "**/*.txt"], **LIMITS)

    assert (files, errors) == ([OutputFile(path="a.txt", data=b"1")], [])


def test_a_glob_matching_nothing_is_not_an_error(root: Path) -> None:
    assert collect_outputs(root, ["reports/*.md"], **LIMITS) == ([], [])


def test_a_recursive_glob_never_descends_into_a_symlinked_dir(root: Path, outside: Path) -> None:
    (root / "mine.md").write_bytes(b"mine")
    (root / "link").symlink_to(outside, target_is_directory=True)

    files, errors = collect_outputs(root, ["**/*.md"], **LIMITS)

    assert files == [OutputFile(path="mine.md", data=b"mine")]
    assert errors == []  # what is behind the link is not even listed


def _collect_in_child(root: str) -> None:
    collect_outputs(Path(root), ["**/*.txt"], **LIMITS)


def test_a_recursive_glob_survives_symlink_loops_the_cli_left_behind(root: Path) -> None:
    (root / "x.txt").write_bytes(b"x")
    (root / "a").symlink_to(".", target_is_directory=True)
    (root / "b").symlink_to(".", target_is_directory=True)
    child = multiprocessing.get_context("fork").Process(target=_collect_in_child, args=(str(root),), daemon=True)
    child.start()
    try:
        child.join(timeout=3)
        assert child.exitcode == 0, "collect_outputs did not finish within 3 s"
    finally:
        if child.is_alive():
            child.kill()
            child.join(timeout=5)


def test_an_output_whose_name_is_not_utf8_is_skipped_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("fine")
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.txt"), "wb") as handle:
        handle.write(b"x")

    files, errors = collect_outputs(tmp_path, ["*.txt"], max_bytes=100, max_total_bytes=1000)

    assert [f.path for f in files] == ["good.txt"]
    assert errors == ["output b'bad\\xff.txt' skipped: its name is not UTF-8"]
