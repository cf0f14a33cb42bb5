"""A run on a repository: its work dir is a checkout of `repo@ref`, and what the CLI changed comes back as a patch
(docs/security.md, "Repositories").

Each box keeps one bare mirror per URL under `WorkspaceSpec.mirror_root`, fetched under a lock; a checkout borrows
the mirror's objects through `objects/info/alternates` (nothing copied, nothing hardlinked: the mirror's objects
are bound read-only into the sandbox at the same path). Fetch and push run here, outside the sandbox, with the
credentials; the CLI never sees them.

Git is never given a chance to run anything: its environment is built from nothing (no system or global config,
no prompts, a private HOME), hooks and fsmonitor are off, submodules are never fetched, only plain transports are
allowed. The change is computed without trusting the CLI's `.git` at all: in a scratch repository of our own,
whose index starts from the base commit read from the mirror.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from executors.base import WorkspaceChange, WorkspaceSpec

GIT = "git"
AUTHOR = ("CLI Scheduler", "scheduler@localhost")
IDENTITY = {"GIT_AUTHOR_NAME": AUTHOR[0], "GIT_AUTHOR_EMAIL": AUTHOR[1], "GIT_COMMITTER_NAME": AUTHOR[0],
            "GIT_COMMITTER_EMAIL": AUTHOR[1]}
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Applied to every command line, above any config file git could read: nothing runs but git itself.
SAFE_CONFIG = (
    "core.hooksPath=/dev/null", "core.fsmonitor=false", "core.symlinks=true", "core.askPass=", "credential.helper=",
    # Only plain transports: never ext:: (runs a command) or fd::, nor a remote helper found on PATH.
    "protocol.allow=never", *(f"protocol.{name}.allow=always" for name in ("https", "http", "ssh", "git", "file")),
    "submodule.recurse=false", "fetch.recurseSubmodules=false", "push.recurseSubmodules=no",
    "gc.auto=0", "maintenance.auto=false", "commit.gpgSign=false", "tag.gpgSign=false",
    "init.defaultBranch=main", "advice.detachedHead=false",
)
# The proxy of a box behind one: the only variables of the worker's environment git gets, beside PATH.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
STDERR_TAIL = 300  # characters of git's stderr an error message may quote
LOCK_POLL = 0.05  # seconds between attempts at a mirror's lock held by another run on this box
HEX = re.compile(r"[0-9a-f]{4,64}")
FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# What git check-ref-format refuses, plus a leading "-": a ref never reaches git as an option.
BAD_REF = re.compile(r"^-|\.\.|@\{|//|/\.|^\.|[\x00-\x20\x7f~^:?*\[\\]|\.lock(/|$)|[/.]$|^@$")
SCHEDULER_HEAD = "refs/scheduler/head"  # the remote's HEAD as last fetched into a mirror (ref "HEAD")


class WorkspaceError(Exception):
    """The repository could not be fetched, the ref resolved, the checkout made or the change recorded. The message
    never holds a credential, and at most a short tail of git's own words."""


def mirror_path(spec: WorkspaceSpec) -> Path:
    """This box's bare mirror of `spec.url`: named from a hash, so a URL never becomes a path."""
    return spec.mirror_root / (hashlib.sha256(spec.url.encode()).hexdigest()[:32] + ".git")


def mirror_objects(spec: WorkspaceSpec) -> Path:
    """What a checkout borrows (its alternates) and the sandbox binds read-only: the mirror's objects, nothing else."""
    return mirror_path(spec) / "objects"


def scratch_dir(work_dir: Path) -> Path:
    """Git's private dir for a run, beside its work dir (never inside: the CLI cannot reach it in the sandbox, and
    it holds the ssh key during a fetch). Removed after each use; a killed worker's is swept with its work dir."""
    return work_dir.with_name(work_dir.name + ".git")


# --- the two steps ---------------------------------------------------------------------------------------------
def workspace_prepare(spec: WorkspaceSpec, work_dir: Path, *, timeout: float,
                      cancel: threading.Event | None = None) -> str:
    """Make `work_dir` (existing, empty) a checkout of `spec.ref` with the base patches committed on top; returns
    the commit of `ref` (the base the change is recorded against). Raises WorkspaceError."""
    _check_url(spec.url)
    _check_ref(spec.ref, "ref")
    if not work_dir.is_dir() or work_dir.is_symlink() or any(work_dir.iterdir()):
        raise WorkspaceError(f"the work dir {work_dir} must be an existing empty directory")
    with _file_errors("preparing the repository"), _scratch(work_dir) as scratch:
        git = _Git(spec, scratch, timeout=timeout, cancel=cancel)
        base_sha = _mirror_update(git, spec)
        _checkout(git, spec, work_dir, base_sha)
    return base_sha


def workspace_change(spec: WorkspaceSpec, work_dir: Path, base_sha: str, *, timeout: float,
                     max_patch_bytes: int = 0, cancel: threading.Event | None = None) -> WorkspaceChange:
    """What the work dir holds now against `base_sha`: a binary patch of everything changed, added or deleted
    (untracked files included, .gitignore respected, `spec.exclude` and nested repositories left out), pushed to
    `spec.push_branch` when set. The base patches are part of it: a follow-up's patch is the whole conversation's
    change, so the latest turn's patch alone, applied on `base_sha`, gives the state it left. Raises
    WorkspaceError when the change cannot be recorded; a failed push only sets `error`.

    Nothing of the CLI's `.git` is read: the index starts from the mirror's base commit in a scratch repository
    whose new objects stay in the scratch dir, so the mirror is never written either."""
    if not FULL_SHA.fullmatch(base_sha):
        raise WorkspaceError(f"the base commit {base_sha!r} is not a full commit id")
    if work_dir.is_symlink() or not work_dir.is_dir():
        raise WorkspaceError("the work dir was replaced during the run; the change was not recorded")
    if not mirror_objects(spec).is_dir():
        raise WorkspaceError(f"the mirror of {_shown(spec.url)} is gone; the change was not recorded")
    with _file_errors("recording the change"), _scratch(work_dir) as scratch:
        git = _Git(spec, scratch, timeout=timeout, cancel=cancel)
        repository = scratch / "repository.git"
        git.run("init", "-q", "--bare", "--template=", str(repository), what="creating the scratch repository")
        (repository / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (repository / "objects" / "info" / "alternates").write_text(f"{mirror_objects(spec)}\n")
        git.env.update(GIT_DIR=str(repository), GIT_WORK_TREE=str(work_dir), GIT_INDEX_FILE=str(scratch / "index"))

        git.run("read-tree", base_sha, what=f"reading the base commit {base_sha[:12]}")
        before = git.run("write-tree", what="writing the base tree").decode().strip()
        excluded = [*_exclusions(spec), *_nested_repositories(git, _exclusions(spec))]
        git.run("add", "-A", "--", ".", *(f":(exclude,literal){path}" for path in excluded),
                what="recording the work dir")
        after = git.run("write-tree", what="writing the changed tree").decode().strip()
        if after == before:
            return WorkspaceChange(base_sha=base_sha)

        if max_patch_bytes:
            _check_size(git, before, after, max_patch_bytes)
        patch = git.run("diff-tree", "-r", "-p", "--binary", "--full-index", "--no-renames", "--no-color",
                        "--no-ext-diff", "--no-textconv", before, after, what="writing the patch")
        if max_patch_bytes and len(patch) > max_patch_bytes:
            raise WorkspaceError(f"the change's patch is {len(patch)} bytes, more than the limit {max_patch_bytes}")
        files, insertions, deletions = _numstat(git.run("diff-tree", "-r", "-z", "--numstat", "--no-renames",
                                                        before, after, what="counting the change"))
        change = WorkspaceChange(base_sha=base_sha, patch=patch, files=files, insertions=insertions,
                                 deletions=deletions)
        if spec.push_branch:
            change = _push(git, spec, base_sha, after, change)
        return change


# --- the mirror ------------------------------------------------------------------------------------------------
def _mirror_update(git: _Git, spec: WorkspaceSpec) -> str:
    """Create or fetch the mirror under its lock, and resolve the ref there. A full commit id the mirror holds
    already needs no fetch and no lock (objects are only ever added)."""
    mirror = mirror_path(spec)
    if FULL_SHA.fullmatch(spec.ref) and mirror.is_dir() and (found := _resolve(git, mirror, spec.ref)):
        return found
    spec.mirror_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(mirror.with_suffix(".lock"), git):
        if mirror.is_dir():
            _fetch(git, spec, mirror)
        else:
            # Built aside and renamed into place: a mirror whose first fetch failed is never taken for a good one.
            fresh = mirror.with_suffix(".new")
            shutil.rmtree(fresh, ignore_errors=True)
            try:
                git.run("init", "-q", "--bare", "--template=", str(fresh), what="creating the mirror")
                _fetch(git, spec, fresh)
            except BaseException:
                shutil.rmtree(fresh, ignore_errors=True)
                raise
            fresh.rename(mirror)
        found = _resolve(git, mirror, spec.ref)
        if not found and FULL_SHA.fullmatch(spec.ref):
            # A commit no branch or tag holds (yet): servers that allow it serve it by id.
            with contextlib.suppress(WorkspaceError):
                _fetch(git, spec, mirror, refspecs=[spec.ref])
                found = _resolve(git, mirror, spec.ref)
    if not found:
        raise WorkspaceError(f"ref {spec.ref!r} not found in {_shown(spec.url)}: not a branch, tag or commit there "
                             "(or an ambiguous abbreviated commit)")
    return found


def _fetch(git: _Git, spec: WorkspaceSpec, mirror: Path, refspecs: list[str] | None = None) -> None:
    if refspecs is None:
        refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
        if spec.ref == "HEAD":
            refspecs.append(f"+HEAD:{SCHEDULER_HEAD}")
    git.run("fetch", "--quiet", "--prune", "--no-tags", "--no-recurse-submodules", "--no-write-fetch-head",
            "--no-auto-gc", "--", spec.url, *refspecs, env={"GIT_DIR": str(mirror)},
            what=f"fetching {_shown(spec.url)}")


def _resolve(git: _Git, mirror: Path, ref: str) -> str:
    """The commit `ref` names in the mirror ("" if none): a full id, a branch, a tag, then an abbreviated id,
    in that order. One `cat-file --batch-check` for all the candidates."""
    if ref == "HEAD":
        candidates = [SCHEDULER_HEAD]
    elif ref.startswith(("refs/heads/", "refs/tags/")):
        candidates = [ref]
    else:
        candidates = [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        if HEX.fullmatch(ref):
            candidates.insert(0 if FULL_SHA.fullmatch(ref) else 2, ref)
    lines = "".join(f"{name}^{{commit}}\n" for name in candidates).encode()
    answer = git.run("cat-file", "--batch-check=%(objectname) %(objecttype)", stdin=lines,
                     env={"GIT_DIR": str(mirror)}, what="resolving the ref")
    for line in answer.decode().splitlines():
        words = line.split()
        if len(words) == 2 and words[1] == "commit" and FULL_SHA.fullmatch(words[0]):
            return words[0]
    return ""


@contextlib.contextmanager
def _locked(path: Path, git: _Git) -> Iterator[None]:
    """One fetch of a mirror at a time on this box (flock: released by the kernel if the worker dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= git.deadline:
                    raise WorkspaceError("timed out waiting for another run's fetch of the same repository") from None
                if git.cancel.wait(LOCK_POLL):
                    raise WorkspaceError("canceled while waiting for the repository") from None
        yield
    finally:
        os.close(fd)  # releases the lock


# --- the checkout ----------------------------------------------------------------------------------------------
def _checkout(git: _Git, spec: WorkspaceSpec, work_dir: Path, base_sha: str) -> None:
    """A repository of the CLI's own in `work_dir`, at `base_sha` (detached), borrowing the mirror's objects."""
    dot_git = work_dir / ".git"
    env = {"GIT_DIR": str(dot_git), "GIT_WORK_TREE": str(work_dir)}
    git.run("init", "-q", "--template=", str(work_dir), what="creating the checkout")
    (dot_git / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (dot_git / "objects" / "info" / "alternates").write_text(f"{mirror_objects(spec)}\n")
    # The CLI's own commits need an identity (HOME in the sandbox has none); no remote: it has nothing to fetch
    # from, and nothing to push with.
    with (dot_git / "config").open("a") as config:
        config.write(f"[user]\n\tname = {AUTHOR[0]}\n\temail = {AUTHOR[1]}\n")
    (dot_git / "info").mkdir(exist_ok=True)
    # The task's own files (inputs, a parent's outputs) are not the change: the CLI's `git status` and
    # `git add -A` leave them out, as workspace_change does.
    (dot_git / "info" / "exclude").write_text("".join(_ignore_line(path) for path in _exclusions(spec)))
    git.run("checkout", "-q", "--detach", base_sha, env=env, what=f"checking out {base_sha[:12]}")
    for number, patch in enumerate(spec.base_patches, 1):
        # In the work dir: git apply takes paths from where it runs (still ours: the CLI has not started).
        git.run("apply", "--index", "--binary", "-", stdin=patch, env=env, cwd=work_dir,
                what=f"applying base patch {number}")
        git.run("commit", "-q", "--no-verify", "-m",
                f"Base patch {number} of {len(spec.base_patches)} (an earlier run's change)",
                env={**env, **IDENTITY}, what=f"committing base patch {number}")


def _ignore_line(path: str) -> str:
    """A .gitignore line matching exactly `path` (a file or a dir) from the top of the work dir."""
    escaped = re.sub(r"([*?\[\\])", r"\\\1", path)
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return f"/{escaped}\n"


# --- the change ------------------------------------------------------------------------------------------------
def _exclusions(spec: WorkspaceSpec) -> list[str]:
    """`spec.exclude` as paths from the top of the work dir ("" would exclude everything: dropped)."""
    return [path.strip("/") for path in spec.exclude if path.strip("/")]


def _nested_repositories(git: _Git, exclude: list[str]) -> list[str]:
    """Untracked directories holding a repository of their own (a clone the CLI made): git would record them as
    submodule links (or fail on one without a commit), so they are left out of the change."""
    listing = git.run("ls-files", "-o", "-z", "--exclude-standard", "--", ".",
                      *(f":(exclude,literal){path}" for path in exclude), what="listing the new files")
    return [name.decode(errors="surrogateescape").rstrip("/") for name in listing.split(b"\0") if name.endswith(b"/")]


def _check_size(git: _Git, before: str, after: str, limit: int) -> None:
    """Refuse, before writing it out, a patch that cannot fit: the new blobs alone are bigger than the limit."""
    raw = git.run("diff-tree", "-r", "-z", "--no-renames", before, after, what="sizing the change").split(b"\0")
    new_ids = {fields[3] for fields in (entry.split() for entry in raw[::2]) if len(fields) >= 5
               and not set(fields[3].decode()) <= {"0"}}
    if not new_ids:
        return
    sizes = git.run("cat-file", "--batch-check=%(objectsize)", stdin=b"\n".join(new_ids) + b"\n",
                    what="sizing the change")
    total = sum(int(word) for word in sizes.split() if word.isdigit())
    if total > limit:
        raise WorkspaceError(f"the change adds {total} bytes of content, more than the limit {limit}")


def _numstat(output: bytes) -> tuple[int, int, int]:
    files = insertions = deletions = 0
    for record in output.split(b"\0"):
        fields = record.split(b"\t")
        if len(fields) < 3:
            continue
        files += 1
        insertions += int(fields[0]) if fields[0].isdigit() else 0  # "-" for a binary file
        deletions += int(fields[1]) if fields[1].isdigit() else 0
    return files, insertions, deletions


def _push(git: _Git, spec: WorkspaceSpec, base_sha: str, tree: str, change: WorkspaceChange) -> WorkspaceChange:
    """One commit of the resulting tree on the base commit, force-pushed (a retry pushes again). A failure is
    reported in `error`; the patch is kept."""
    try:
        _check_ref(spec.push_branch, "push branch")
        commit = git.run("commit-tree", tree, "-p", base_sha, "-m", f"Changes made by a CLI Scheduler run "
                         f"({spec.push_branch})", env=IDENTITY, what="committing the change").decode().strip()
        git.run("push", "--quiet", "--force", "--no-verify", "--no-recurse-submodules", "--", spec.url,
                f"{commit}:refs/heads/{spec.push_branch}", what=f"pushing to {spec.push_branch}")
    except WorkspaceError as exc:
        return replace(change, error=str(exc))
    return replace(change, pushed_branch=spec.push_branch, pushed_sha=commit)


# --- running git -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_errors(what: str) -> Iterator[None]:
    """The box's own files (the mirrors, the scratch dir) failing is a repository failure like any other."""
    try:
        yield
    except OSError as exc:
        where = f": {Path(exc.filename).name}" if exc.filename else ""
        raise WorkspaceError(f"{what} failed: {exc.strerror or exc}{where}") from None


@contextlib.contextmanager
def _scratch(work_dir: Path) -> Iterator[Path]:
    path = scratch_dir(work_dir)
    if path.is_symlink():
        path.unlink()
    shutil.rmtree(path, ignore_errors=True)  # left over by a killed worker
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _Git:
    """Git with a controlled environment, a deadline for all of a step's commands and credentials that never
    reach argv, a URL or a config file."""

    def __init__(self, spec: WorkspaceSpec, scratch: Path, *, timeout: float,
                 cancel: threading.Event | None) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.cancel = cancel or threading.Event()
        self.scratch = scratch
        home = scratch / "home"
        home.mkdir(mode=0o700)
        self.env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "LANG": "C", "HOME": str(home),
                    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0",
                    "GIT_NO_REPLACE_OBJECTS": "1", "GIT_SSH_COMMAND": self._ssh_command(spec.credentials)}
        self.env.update({name: os.environ[name] for name in PROXY_VARIABLES if os.environ.get(name)})
        self.secrets: tuple[str, ...] = tuple(v for v in (spec.credentials.get("token"),
                                                           spec.credentials.get("ssh_key")) if v)
        unknown = set(spec.credentials) - {"token", "username", "ssh_key"}
        if unknown:
            raise WorkspaceError(f"unknown repository credential fields: {', '.join(sorted(unknown))}")
        if token := spec.credentials.get("token"):
            username = spec.credentials.get("username") or "x-access-token"
            basic = base64.b64encode(f"{username}:{token}".encode()).decode()
            # In git's environment only (GIT_CONFIG_COUNT): never in argv (/proc/*/cmdline), a URL or a file.
            self.env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader",
                            GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}")
            self.secrets += (basic,)

    def _ssh_command(self, credentials: dict[str, str]) -> str:
        """ssh with nothing of the worker's own: no config file, no agent, no key but the repository's, host keys
        learnt into a file of this step's (-F /dev/null: neither ~/.ssh/config nor /etc/ssh/ssh_config)."""
        key = self.scratch / "ssh-key"
        if credentials.get("ssh_key"):
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(credentials["ssh_key"].strip() + "\n")  # OpenSSH refuses a key without its newline
        # Without a key, -i names a file that does not exist: with IdentitiesOnly, ssh then offers no key at all.
        return shlex.join(["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
                           "-o", "IdentityAgent=none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                           "-o", f"UserKnownHostsFile={self.scratch / 'known_hosts'}"])

    def run(self, *args: str, what: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> bytes:
        """Run one git command; its stdout. Raises WorkspaceError (scrubbed, a short tail of stderr) on failure,
        on the step's deadline and on cancel: the command's whole process group is killed."""
        argv = [GIT]
        for setting in SAFE_CONFIG:
            argv += ["-c", setting]
        command_env = {**self.env, **(env or {})}
        try:
            proc = subprocess.Popen([*argv, *args], cwd=cwd or self.scratch, env=command_env, start_new_session=True,
                                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise WorkspaceError(f"{what} failed: git could not be started ({exc.strerror})") from None
        stopped = ""
        while True:
            left = self.deadline - time.monotonic()
            try:
                # Short slices only to notice a cancel: communicate returns the moment git exits.
                out, err = proc.communicate(stdin, timeout=max(0.0, min(left, 0.2)))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= self.deadline:
                    stopped = f"timed out (the repository steps may take {self.timeout:g}s)"
                elif self.cancel.is_set():
                    stopped = "canceled"
                if stopped:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    out, err = proc.communicate()
                    break
        if stopped:
            raise WorkspaceError(f"{what} {stopped}")
        if proc.returncode != 0:
            raise WorkspaceError(f"{what} failed: {self._tail(err)}")
        return out

    def _tail(self, stderr: bytes) -> str:
        text = " ".join(stderr.decode(errors="replace").split())
        text = scrub_secrets(text, self.secrets)
        return ("…" + text[-STDERR_TAIL:]) if len(text) > STDERR_TAIL else (text or "git gave no reason")


def scrub_secrets(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
        for line in secret.splitlines():  # an ssh key quoted a line at a time
            if len(line.strip()) >= 8:
                text = text.replace(line.strip(), "[redacted]")
    return text


def _check_url(url: str) -> None:
    if not url or url.startswith("-") or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise WorkspaceError(f"{_shown(url)!r} is not a repository URL")
    if re.match(r"^[a-z0-9+.-]+::", url, re.IGNORECASE):
        raise WorkspaceError(f"{_shown(url)!r}: remote helpers (<transport>::<address>) are not allowed")


def _check_ref(ref: str, what: str) -> None:
    if ref != "HEAD" and (not ref or BAD_REF.search(ref)):
        raise WorkspaceError(f"{what} {ref!r} is not a valid branch, tag or commit name")


def _shown(url: str) -> str:
    """A URL as messages show it: without the password it should never carry."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:[redacted]@", url, flags=re.IGNORECASE)

