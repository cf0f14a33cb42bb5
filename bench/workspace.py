"""`python -m bench workspace`: time to a ready workspace for a run on a repository (issue 17).

A generated repository (`--files` text files of random content, `--mb` MB in all, plus `--history` commits that
each edit a few files) is served from a local bare repository. Measured, in one process:

* first run: `workspace_prepare` with no mirror yet (mirror created and fetched, then the checkout);
* later run: `workspace_prepare` with the mirror in place, after a new commit was pushed to the origin (fetch,
  resolve, checkout: what every run on a known repository pays);
* bare checkout: `git checkout` of the same tree into an empty dir, nothing else (the floor);
* change: `workspace_change` after the CLI edited 10 files (the whole tree is hashed: the CLI's index is not
  trusted).

Later runs, bare checkouts and changes are interleaved, so background load hits each alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Figure, add_output_arguments, console, count, finish, machine, part_parser
from bench.docs import figures_section, spread
from executors.base import WorkspaceSpec
from executors.git import workspace_change, workspace_prepare

TARGET_SECONDS = 1.0  # a later run's prepare, beyond the bare checkout of the same tree
TIMEOUT = 600.0
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "LANG": "C",
       "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "Bench",
       "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = part_parser("workspace", __doc__)
    parser.add_argument("--mb", type=count, default=100, help="size of the checkout in MB (default 100)")
    parser.add_argument("--files", type=count, default=2000, help="files in the tree (default 2000)")
    parser.add_argument("--history", type=count, default=20, help="commits after the first (default 20)")
    parser.add_argument("--first-runs", type=count, default=2, help="first runs, each with no mirror (default 2)")
    parser.add_argument("--runs", type=count, default=5, help="later runs, bare checkouts, changes (default 5)")
    add_output_arguments(parser, summary=True)
    return parser.parse_args(argv)


def _git(*args: str, cwd: Path | None = None, stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, input=stdin, env={**ENV, **(env or {})}, capture_output=True,
                          check=True, timeout=TIMEOUT)
    return done.stdout.decode().strip()


def _content(size: int) -> bytes:
    """Lines of random hex digits: text that compresses to about half, like a code base's blobs."""
    text = os.urandom(size // 2 + 64).hex().encode()[:size]
    return b"\n".join(text[i:i + 79] for i in range(0, len(text), 80))[:size]


def _path(n: int) -> str:
    return f"src/module{n // 100:02d}/file{n:04d}.txt"


def generate(origin: Path, *, mb: int, files: int, history: int) -> None:
    """A bare repository built with git fast-import: one big commit, then `history` small ones."""
    _git("init", "-q", "--bare", "-b", "main", str(origin))
    size = mb * 1024 * 1024 // files
    stream = bytearray()

    def commit(number: int, changes: list[tuple[str, bytes]]) -> None:
        stream.extend(f"commit refs/heads/main\nmark :{number}\n"
                      f"committer Bench <bench@localhost> {1_700_000_000 + number} +0000\n"
                      f"data {len(message := f'commit {number}'.encode())}\n".encode() + message + b"\n")
        if number > 1:
            stream.extend(f"from :{number - 1}\n".encode())
        for path, data in changes:
            stream.extend(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
        stream.extend(b"\n")

    commit(1, [(_path(n), _content(size)) for n in range(files)])
    for number in range(2, history + 2):
        commit(number, [(_path(n), _content(size)) for n in range(number * 7 % files, files, max(1, files // 5))])
    _git("fast-import", "--quiet", cwd=origin, stdin=bytes(stream))


def push_commit(origin: Path, clone: Path, number: int) -> None:
    """One more commit on main, as a colleague pushing while runs go on."""
    (clone / "later.txt").write_text(f"change {number}\n")
    _git("add", "later.txt", cwd=clone)
    _git("commit", "-q", "-m", f"later {number}", cwd=clone)
    _git("push", "-q", "origin", "HEAD:main", cwd=clone)


def bare_checkout(origin: Path, target: Path) -> float:
    target.mkdir()
    index = target.with_name(target.name + ".index")
    begun = time.perf_counter()
    _git(f"--git-dir={origin}", f"--work-tree={target}", "checkout", "-q", "main", "--", ".",
         env={"GIT_INDEX_FILE": str(index)})
    return time.perf_counter() - begun


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = "python -m bench workspace" + (" " + " ".join(argv) if argv else "")
    info = machine()
    console.print(f"[bold]bench workspace[/] {command}; {args.mb} MB in {args.files} files, "
                  f"{args.history} more commits; " + "; ".join(f"{k}: {v}" for k, v in info.items()))
    started = time.monotonic()
    first: list[float] = []
    later: list[float] = []
    bare: list[float] = []
    change: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-workspace-") as folder:
        root = Path(folder)
        origin = root / "origin.git"
        begun = time.perf_counter()
        generate(origin, mb=args.mb, files=args.files, history=args.history)
        pack_mb = sum(p.stat().st_size for p in (origin / "objects").rglob("*") if p.is_file()) / 1024 / 1024
        console.print(f"  generated in {time.perf_counter() - begun:.1f} s: packed {pack_mb:.0f} MB")
        clone = root / "colleague"
        _git("clone", "-q", "--depth", "1", f"file://{origin}", str(clone))

        def run_dir(name: str) -> Path:
            work = root / "runs" / name
            work.mkdir(parents=True)
            return work

        for n in range(args.first_runs):
            spec = WorkspaceSpec(url=str(origin), ref="main", mirror_root=root / f"mirrors-{n}")
            begun = time.perf_counter()
            workspace_prepare(spec, run_dir(f"first-{n}"), timeout=TIMEOUT)
            first.append(time.perf_counter() - begun)
            console.print(f"  first run {n + 1}: {first[-1]:.2f} s")
            shutil.rmtree(root / "runs" / f"first-{n}")
        spec = WorkspaceSpec(url=str(origin), ref="main", mirror_root=root / "mirrors-0")
        for n in range(args.runs):
            push_commit(origin, clone, n)
            work = run_dir(f"later-{n}")
            begun = time.perf_counter()
            base_sha = workspace_prepare(spec, work, timeout=TIMEOUT)
            later.append(time.perf_counter() - begun)
            bare.append(bare_checkout(origin, root / "runs" / f"bare-{n}"))
            for k in range(10):
                path = work / _path(k * args.files // 10)
                path.write_bytes(path.read_bytes()[:1000] + b"\nedited by the CLI\n")
            begun = time.perf_counter()
            recorded = workspace_change(spec, work, base_sha, timeout=TIMEOUT)
            change.append(time.perf_counter() - begun)
            assert recorded.files == 10, recorded
            console.print(f"  later run {n + 1}: prepare {later[-1]:.2f} s, bare checkout {bare[-1]:.2f} s, "
                          f"change {change[-1]:.2f} s")
            shutil.rmtree(root / "runs")

    beyond = statistics.median(later) - statistics.median(bare)
    figures = [
        Figure("workspace", "later run: prepare beyond the bare checkout (median)", f"{beyond:.2f} s",
               f"bare checkout {statistics.median(bare):.2f} s", f"< {TARGET_SECONDS:g} s", beyond < TARGET_SECONDS),
        Figure("workspace", "first run: mirror created + checkout (median)", f"{statistics.median(first):.2f} s",
               "-", "-", None),
        Figure("workspace", "change of 10 edited files (median)", f"{statistics.median(change):.2f} s", "-", "-",
               None),
    ]
    rows = {"first run (mirror created, fetched, checkout)": first, "later run (fetch, checkout)": later,
            "bare checkout (git checkout of the tree alone)": bare, "change (10 files edited, whole tree hashed)":
            change}
    for name, values in rows.items():
        console.print(f"  {name:48} {spread(values, '{:.2f}')} s")

    def markdown(load: str, elapsed: float) -> str:
        table = ["| step | seconds: median (min-max) |", "|---|---|",
                 *(f"| {name} | {spread(values, '{:.2f}')} |" for name, values in rows.items())]
        return figures_section(
            "Workspace: time to a ready checkout (issue 17)", command, f"in {elapsed:.0f} s", info=info, load=load,
            setup=f"A generated repository: {args.mb} MB in {args.files} text files, {args.history} more commits "
                  f"({pack_mb:.0f} MB packed), served from a local bare repository; {args.first_runs} first runs "
                  f"(each with no mirror), {args.runs} later runs each after a new commit on the origin.",
            table=table, figures=figures)

    return finish("workspace", args, figures, {"command": command, "runs": args.runs}, markdown, started=started)
