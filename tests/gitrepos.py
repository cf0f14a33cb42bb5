"""Real git repositories for the tests (no mocks of git): a bare "origin" with a little history, branches and a
tag, plus the helpers to read a tree back and to check a patch on a fresh clone.

The tests' own git runs with no system or global config, so a developer's ~/.gitconfig changes nothing.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

BINARY = bytes(range(256)) * 4 + b"\x00\xff\x00"
IDENTITY = {"GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.com",
            "GIT_COMMITTER_NAME": "Test Author", "GIT_COMMITTER_EMAIL": "author@example.com"}


def git(*args: str, cwd: Path | None = None, stdin: bytes | None = None, check: bool = True) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "LANG": "C",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", **IDENTITY}
    done = subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "advice.detachedHead=false", *args],
                          cwd=cwd, input=stdin, env=env, capture_output=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode(errors="surrogateescape").strip()


@dataclass
class Origin:
    """A bare repository and a working clone of it used to add history."""

    bare: Path
    work: Path
    commits: dict[str, str] = field(default_factory=dict)  # first, second (main), feature, tagged (= first)

    @property
    def url(self) -> str:
        return str(self.bare)

    def commit(self, files: dict[str, bytes | None], *, branch: str = "main", message: str = "more") -> str:
        """A commit on `branch` writing (or, for None, deleting) `files`, pushed; its id."""
        git("checkout", "-q", branch, cwd=self.work)
        for name, data in files.items():
            path = self.work / name
            if data is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git("push", "-q", "origin", branch, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


def make_origin(folder: Path, name: str = "origin") -> Origin:
    """main: first (README.md, src/app.py, data.bin, a symlink, .gitignore) then second; feature: from first;
    v1: an annotated tag of first. HEAD is main."""
    bare = folder / f"{name}.git"
    git("init", "-q", "--bare", str(bare))
    work = folder / f"{name}-work"
    git("clone", "-q", str(bare), str(work))
    origin = Origin(bare=bare, work=work)
    (work / "src").mkdir()
    (work / "README.md").write_text("hello\nworld\n")
    (work / "src" / "app.py").write_text("print('app')\n")
    (work / "data.bin").write_bytes(BINARY)
    (work / ".gitignore").write_text("*.log\n")
    (work / "readme-link").symlink_to("README.md")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=bare)
    origin.commits["first"] = origin.commits["tagged"] = git("rev-parse", "HEAD", cwd=work)
    git("tag", "-a", "v1", "-m", "version 1", cwd=work)
    git("push", "-q", "origin", "v1", cwd=work)
    git("checkout", "-q", "-b", "feature", cwd=work)
    origin.commits["feature"] = origin.commit({"feature.txt": b"feature\n"}, branch="feature", message="feature")
    origin.commits["second"] = origin.commit({"README.md": b"hello\nsecond world\n", "docs/guide.md": b"# Guide\n"},
                                             message="second")
    return origin


def tree_of(folder: Path, *, skip: tuple[str, ...] = (".git",)) -> dict[str, bytes | str]:
    """Every file under `folder`: its bytes, or for a symlink "-> target" (never followed)."""
    found: dict[str, bytes | str] = {}
    for here, dirs, files in os.walk(folder):
        rel = os.path.relpath(here, folder)
        linked = [d for d in dirs if os.path.islink(os.path.join(here, d))]  # listed as dirs, never walked
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in skip and d not in linked]
        for name in [*files, *linked]:
            path, key = os.path.join(here, name), os.path.normpath(os.path.join(rel, name))
            if key not in skip:
                found[key] = f"-> {os.readlink(path)}" if os.path.islink(path) else Path(path).read_bytes()
    return found


def tree_at(origin: Origin, commit: str, folder: Path, *, patches: tuple[bytes, ...] = ()) -> dict[str, bytes | str]:
    """The tree of `commit` in a fresh clone, after `git apply` of each patch (which must apply cleanly)."""
    git("clone", "-q", "--no-checkout", origin.url, str(folder))
    git("checkout", "-q", "--detach", commit, cwd=folder)
    for patch in patches:
        git("apply", "--binary", "--whitespace=nowarn", "-", cwd=folder, stdin=patch)
    return tree_of(folder)
