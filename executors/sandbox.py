"""The bubblewrap sandbox every run goes into (docs/security.md).

Inside, the CLI sees only: its work dir (rw), its group's state dirs (rw), its own install dir and the system's
directories (ro), a private /tmp and HOME, its own /proc (a PID namespace: it sees no other process), a minimal
/dev, a short list of /etc files it needs to resolve names and verify TLS, and the operator's extra paths.
The network is shared: the CLIs must reach their APIs. Nothing of the worker is reachable: not its
environment, not `var/` (database, generated keys, other runs' work dirs), not other groups' state dirs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from executors.base import Sandbox

BWRAP = "bwrap"
MODES = ("bwrap", "off")
# The system, read-only. On merged-/usr systems /bin, /lib… are symlinks into /usr and are recreated as such.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# From /etc only what name resolution, TLS and user lookups need: never the whole of it (it can hold an
# operator's environment files, keys, service configs).
ETC_FILES = (
    "/etc/alternatives", "/etc/ca-certificates", "/etc/ca-certificates.conf", "/etc/gai.conf", "/etc/group",
    "/etc/host.conf", "/etc/hostname", "/etc/hosts", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/localtime", "/etc/mime.types", "/etc/nsswitch.conf", "/etc/os-release", "/etc/passwd", "/etc/pki",
    "/etc/resolv.conf", "/etc/services", "/etc/ssl", "/etc/timezone", "/etc/protocols", "/etc/gitconfig",
)
# Paths inside the sandbox: /tmp there is a private tmpfs, gone with the sandbox.
TMP_INSIDE = "/tmp"  # noqa: S108
HOME_INSIDE = "/tmp/home"  # noqa: S108 - a private HOME when the group names none
# Environment variables naming a CLI's state dir: given by a group's `env`, they are bound read-write.
STATE_DIR_VARIABLES = ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_CLI_HOME", "HOME", "XDG_CONFIG_HOME")
WRAPPER_DEPTH = 2  # bwrap, then its init (PID 1 of the namespace), then the CLI


class SandboxError(Exception):
    """The sandbox cannot be set up as configured (a missing bwrap, a bad path)."""


def bwrap_path() -> str | None:
    return shutil.which(BWRAP)


def bwrap_check() -> str:
    """Start one empty sandbox; returns "" when bubblewrap works here, else why not (for the worker's start)."""
    path = bwrap_path()
    if path is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        probe = subprocess.run(
            [path, "--ro-bind", "/", "/", "--unshare-pid", "--proc", "/proc", "--dev", "/dev", "--", "true"],
            capture_output=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not be started: {exc}"
    if probe.returncode != 0:
        return f"bwrap cannot create a sandbox here: {probe.stderr.decode(errors='replace').strip()[:300]}"
    return ""


def install_dir(binary: str) -> Path:
    """The directory a CLI is installed in, from its resolved path: the npm package root (the nearest parent
    with a package.json) when there is one, else the binary's own directory."""
    real = Path(os.path.realpath(binary))
    for parent in real.parents:
        if (parent / "package.json").is_file():
            return parent
        if parent.name == "node_modules" or parent == parent.parent:
            break
    return real.parent


def _under_system_dirs(path: Path) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in SYSTEM_DIRS)


def bwrap_argv(*, sandbox: Sandbox, binary: str, work_dir: Path, env: dict[str, str], work_dir_inside: str = "",
               shared_objects: str = "") -> list[str]:
    """The bwrap command line that runs `binary` (absolute) inside the sandbox, in `work_dir` (seen at
    `work_dir_inside` when given). `shared_objects`: a repository mirror's objects dir, which the checkout in the
    work dir borrows (its alternates), bound read-only at its own path; nothing else of the mirrors is."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxError("bubblewrap (bwrap) is not installed; install it or set SCHEDULER_SANDBOX=off")
    argv = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]
    for directory in SYSTEM_DIRS:
        if os.path.islink(directory):
            argv += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            argv += ["--ro-bind", directory, directory]
    for name in ETC_FILES:
        argv += ["--ro-bind-try", name, name]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", TMP_INSIDE, "--dir", HOME_INSIDE, "--tmpfs", "/run"]
    cli_dir = install_dir(binary)
    if not _under_system_dirs(cli_dir):
        argv += ["--ro-bind", str(cli_dir), str(cli_dir)]
        if not _under_system_dirs(Path(binary).parent) and Path(binary).parent != cli_dir:
            argv += ["--ro-bind", str(Path(binary).parent), str(Path(binary).parent)]
    for path in sandbox.ro_paths:
        argv += ["--ro-bind", _existing(path, "SCHEDULER_SANDBOX_RO_PATHS"), path]
    for path in [*sandbox.state_dirs, *sandbox.rw_paths]:
        argv += ["--bind", _existing(path, "a read-write path"), path]
    if shared_objects:
        argv += ["--ro-bind", _shared_objects(shared_objects, sandbox, work_dir), shared_objects]
    inside = _inside(work_dir_inside) if work_dir_inside else str(work_dir)
    if inside != str(work_dir) and os.path.dirname(inside) != "/":
        argv += ["--dir", os.path.dirname(inside)]
    argv += ["--bind", str(work_dir), inside, "--chdir", inside]
    if env.get("HOME") not in sandbox.state_dirs:
        argv += ["--setenv", "HOME", HOME_INSIDE]
    argv += ["--setenv", "TMPDIR", TMP_INSIDE, "--", binary]
    return argv


def _inside(path: str) -> str:
    """Where the work dir is seen: an absolute, plain path outside the system dirs and the sandbox's own."""
    normal = os.path.normpath(path)
    reserved = (*SYSTEM_DIRS, "/proc", "/dev", "/etc", "/run", HOME_INSIDE)
    if (not os.path.isabs(path) or normal != path or normal == "/"
            or any(normal == r or normal.startswith(r + "/") for r in reserved)):
        raise SandboxError(f"{path!r} cannot be the work dir inside the sandbox: an absolute plain path outside "
                           "the system dirs is needed")
    return normal


def _shared_objects(path: str, sandbox: Sandbox, work_dir: Path) -> str:
    """A mirror's objects, read-only: refused if the mirrors lie inside something bound read-write or read-only
    (the CLI would see other repositories' mirrors, or write to this one)."""
    _existing(path, "the repository mirror")
    for bound in (*sandbox.ro_paths, *sandbox.rw_paths, *sandbox.state_dirs, str(work_dir)):
        if Path(path).is_relative_to(bound):
            raise SandboxError(f"the repository mirrors ({Path(path).parent.parent}) must not be inside a path "
                               f"bound into the sandbox ({bound})")
    return path


def _existing(path: str, what: str) -> str:
    if not os.path.isabs(path) or not os.path.exists(path):
        raise SandboxError(f"{path!r} in {what} is not an existing absolute path")
    return path


def state_dirs(group_env: dict[str, str]) -> tuple[str, ...]:
    """The state dirs a group's own `env` names (absolute paths), created if missing: bound read-write. Only the
    group's env counts: the worker's own HOME is never bound."""
    found: list[str] = []
    for name in STATE_DIR_VARIABLES:
        value = group_env.get(name, "")
        if value and os.path.isabs(value) and value not in found:
            os.makedirs(value, mode=0o700, exist_ok=True)
            found.append(value)
    return tuple(found)
