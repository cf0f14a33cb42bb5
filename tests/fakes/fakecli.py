"""Stand-ins for the headless protocols of the ``claude``, ``codex`` and ``gemini`` CLIs.

Used by the executables in ``tests/fakes/bin``; stdlib only. Behaviour is steered by one
``FAKE: {json}`` line inside the prompt (see README.md in this directory).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid

VERSIONS = {"claude": "2.1.197 (Claude Code)", "codex": "codex-cli 0.169.0", "gemini": "0.61.0"}
DEFAULT_MODELS = {"claude": "claude-sonnet-4-5-20250929", "codex": "gpt-5-codex", "gemini": "gemini-2.5-pro"}
SECOND_GEMINI_MODEL = "gemini-2.5-flash-lite"
CRED_VARS = {
    "claude": ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"),
    "codex": ("CODEX_API_KEY", "CODEX_ACCESS_TOKEN"),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
SCENARIOS = (
    "ok",
    "rate_limit",
    "rate_limit_api",
    "overloaded",
    "provider_error",
    "auth",
    "credit",
    "hang",
    "exit",
    "garbage",
)
FAILURES = frozenset(SCENARIOS) - {"ok", "garbage"}
DIRECTIVE_ERROR_EXIT = 97
HTTP_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}


class Exit(Exception):  # control flow, not an error
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ----------------------------------------------------------------------------- output helpers


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def out(text: str) -> None:
    sys.stdout.flush()
    _write_all(1, text.encode("utf-8"))


def err(text: str) -> None:
    sys.stderr.flush()
    _write_all(2, text.encode("utf-8"))


def emit_filler(fd: int, nbytes: int, label: str) -> None:
    """Write exactly ``nbytes`` bytes of non-JSON lines (ending in a newline) in 64 KiB chunks."""
    if nbytes <= 0:
        return
    line = f"[{label} filler] ".ljust(99, ".") + "\n"
    chunk = (line * 655).encode()  # 65500 bytes
    remaining = nbytes
    while remaining > 0:
        piece = chunk[: min(remaining, len(chunk))]
        remaining -= len(piece)
        if remaining == 0:
            piece = piece[:-1] + b"\n"
        _write_all(fd, piece)


def jdump(obj: object) -> str:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: valid JSON only as an escape (\ud800), as a real CLI prints it
        return json.dumps(obj, separators=(",", ":"))
    return text


NOISE_LINES = (
    "Loaded cached credentials.\n",
    "(node:4242) [DEP0040] DeprecationWarning: The `punycode` module is deprecated.\n",
    "{not json at all\n",
)
TRACE = (
    "Error: socket hang up\n"
    "    at connResetException (node:internal/errors:720:14)\n"
    "    at TLSSocket.socketOnEnd (node:_http_client:519:23)\n"
    "    at TLSSocket.emit (node:events:529:35)\n"
    "    at endReadableNT (node:internal/streams/readable:1400:12) {\n"
    "  code: 'ECONNRESET'\n"
    "}\n"
)


def emit_garbage(trace_to_stdout: bool) -> None:
    out("".join(NOISE_LINES))
    if trace_to_stdout:
        out(TRACE)
    else:
        err(TRACE)


# ----------------------------------------------------------------------------- run state


class Run:
    """Everything common to one invocation of a fake CLI."""

    def __init__(self, tool: str, argv: list[str]) -> None:
        self.tool = tool
        self.argv = argv
        self.model: str | None = None  # as given on the command line
        self.prompt = ""
        self.directive: dict = {}
        self.scenario = "ok"
        self.started = time.time()
        self.child: subprocess.Popen | None = None
        self.session_id = str(uuid.uuid4())
        self.resumed: str | None = None  # the session id given to resume, once found
        self.history = 0  # turns of the resumed session before this one
        self.start_logged = False

    # -- credentials / logging
    def cred(self) -> str | None:
        for name in CRED_VARS[self.tool]:
            if os.environ.get(name):
                return os.environ[name]
        return None

    def log(self, event: str, **extra: object) -> None:
        path = os.environ.get("FAKE_CLI_LOG")
        if not path:
            return
        rec = {
            "event": event,
            "tool": self.tool,
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
            "t": time.time(),
            "tag": self.directive.get("tag"),
            "cred": self.cred(),
            "cwd": os.getcwd(),
            "argv": [self.tool, *self.argv],
            "model": self.model,
        }
        rec.update(extra)
        data = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)  # one write on an O_APPEND fd: lines never interleave
        finally:
            os.close(fd)

    def reject(self, code: int, message: str, summary: str | None = None) -> Exit:
        """Argument / environment error before any work: message to stderr, 'reject' log line."""
        if message:
            err(message if message.endswith("\n") else message + "\n")
        if summary is None:
            summary = message.strip().splitlines()[0] if message.strip() else ""
        self.log("reject", exit=code, error=summary)
        return Exit(code)

    # -- prompt / directive
    def set_prompt(self, prompt: str) -> None:
        self.prompt = prompt
        for line in prompt.splitlines():
            s = line.strip()
            if s.startswith("FAKE:"):
                try:
                    d = json.loads(s[len("FAKE:") :])
                except ValueError as exc:
                    raise self.reject(
                        DIRECTIVE_ERROR_EXIT, f"fake {self.tool}: invalid FAKE directive: {exc}"
                    ) from None
                if not isinstance(d, dict):
                    raise self.reject(
                        DIRECTIVE_ERROR_EXIT, f"fake {self.tool}: FAKE directive must be an object"
                    )
                self.directive = d
                break
        # An account-wide condition (a revoked key, no network) comes from the group's env, whatever the prompt.
        scenario = os.environ.get("FAKE_CLI_FORCE_SCENARIO") or self.directive.get("scenario", "ok")
        if scenario not in SCENARIOS:
            raise self.reject(DIRECTIVE_ERROR_EXIT, f"fake {self.tool}: unknown scenario {scenario!r}")
        key = self.directive.get("once_key")
        if key is not None and scenario in FAILURES and not self._first_time(str(key)):
            scenario = "ok"
        self.scenario = scenario

    def _first_time(self, key: str) -> bool:
        state = os.environ.get("FAKE_CLI_STATE") or "/tmp"
        os.makedirs(state, exist_ok=True)
        name = "fakecli-once-" + hashlib.sha256(key.encode()).hexdigest()[:32]
        try:
            fd = os.open(os.path.join(state, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        os.write(fd, key.encode())
        os.close(fd)
        return True

    @property
    def visible_prompt(self) -> str:
        return "\n".join(ln for ln in self.prompt.splitlines() if not ln.strip().startswith("FAKE:")).strip()

    @property
    def answer(self) -> str:
        a = self.directive.get("answer")
        return str(a) if a is not None else "done: " + self.visible_prompt[:40]

    @property
    def input_tokens(self) -> int:
        if "turns" in self.directive:
            return self.model_turns * self.turn_tokens[0]
        return len(self.prompt.split())

    @property
    def output_tokens(self) -> int:
        if "turns" in self.directive:
            return self.model_turns * self.turn_tokens[1]
        return len(self.answer.split())

    # -- agent turns (`turns`, `write`): what a streaming run shows of its work
    @property
    def turn_tokens(self) -> tuple[int, int]:
        tokens = self.directive.get("turn_tokens") or [1000, 100]
        return int(tokens[0]), int(tokens[1])

    @property
    def turn_delay(self) -> float:
        return float(self.directive.get("turn_delay", 0))

    @property
    def written_paths(self) -> list[str]:
        return [*(self.directive.get("write") or {}), *(self.directive.get("write_bytes_b64") or {})]

    @property
    def model_turns(self) -> int:
        """Model turns in all: `turns` (default 1: the answer), plus one that writes the `write` files."""
        return max(1, int(self.directive.get("turns", 1))) + (1 if self.written_paths else 0)

    def tool_turns(self, step_tool, write_tool) -> list[dict]:
        """The turns before the answer, in order: `turns - 1` steps that run a command, then one that writes the
        files (done here, on the way: only a run that gets this far writes them). Each is
        {"text", "calls": [(tool name, input, output)], "usage": (in, out)}, built lazily by the caller."""
        turns = []
        for k in range(1, max(1, int(self.directive.get("turns", 1)))):
            turns.append({"text": f"Step {k}: running a command.", "calls": [step_tool(k)], "usage": self.turn_tokens,
                          "write": False})
        if self.written_paths:
            usage = self.turn_tokens if "turns" in self.directive else (self.input_tokens, 0)
            turns.append({"text": f"Writing {', '.join(self.written_paths)}.", "usage": usage, "write": True,
                          "calls": [write_tool(p, self._write_text(p)) for p in self.written_paths]})
        return turns

    def final_usage(self) -> tuple[int, int]:
        if "turns" in self.directive:
            return self.turn_tokens
        return (0 if self.written_paths else self.input_tokens), self.output_tokens

    def _write_text(self, rel: str) -> str:
        text = (self.directive.get("write") or {}).get(rel)
        if text is not None:
            return str(text)
        return f"({len(base64.b64decode(self.directive['write_bytes_b64'][rel]))} bytes)"

    @property
    def reset_in(self) -> float:
        return float(self.directive.get("reset_in", 120))

    @property
    def http_status(self) -> int:
        return int(self.directive.get("status", 500))

    def duration_ms(self) -> int:
        return int((time.time() - self.started) * 1000)

    # -- sessions: stored like the real CLIs store them, under the account's state dir
    def session_file(self, session_id: str) -> str:
        """claude files sessions per project dir (the cwd) under CLAUDE_CONFIG_DIR, gemini per project under
        GEMINI_CLI_HOME, codex under CODEX_HOME whatever the cwd: a resume finds them only on the same account,
        and for claude and gemini only from the same directory path."""
        home = os.environ.get("HOME") or "/tmp"
        cwd = os.getcwd()
        if self.tool == "claude":
            base = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(home, ".claude")
            return os.path.join(base, "projects", re.sub(r"[^A-Za-z0-9]", "-", cwd), f"{session_id}.jsonl")
        if self.tool == "codex":
            base = os.environ.get("CODEX_HOME") or os.path.join(home, ".codex")
            return os.path.join(base, "sessions", f"rollout-{session_id}.jsonl")
        base = os.environ.get("GEMINI_CLI_HOME") or home
        project = hashlib.sha256(cwd.encode()).hexdigest()[:16]
        return os.path.join(base, ".gemini", "tmp", project, "chats", f"session-{session_id}.jsonl")

    def resume(self, session_id: str) -> None:
        """Continue a stored session, or fail like the real CLI does when it cannot find it."""
        path = self.session_file(session_id)
        if not os.path.isfile(path):
            message = {
                "claude": f"No conversation found with session ID: {session_id}",
                "codex": f"Error: thread/resume: thread/resume failed: no rollout found for thread id {session_id} "
                         "(code -32600)",
                "gemini": "Error resuming session: No previous sessions found for this project.",
            }[self.tool]
            raise self.reject(1, message)
        with open(path, encoding="utf-8") as handle:
            self.history = sum(1 for line in handle if line.strip())
        self.session_id = self.resumed = session_id

    def _record_session(self) -> None:
        path = self.session_file(self.session_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"prompt": self.visible_prompt, "t": time.time()}) + "\n")

    # -- the shared body of a run
    def begin(self) -> None:
        """After a successful parse: start log, filler, env dump, sleep; hang/exit scenarios end here."""
        extra: dict = {}
        if self.scenario == "hang":
            self.child = subprocess.Popen(
                [sys.executable, "-c", "import time\nwhile True:\n    time.sleep(3600)\n"],
                stdin=subprocess.DEVNULL,
            )  # same process group, inherits stdout/stderr like a real tool subprocess
            extra["child_pid"] = self.child.pid
        self._record_session()
        self.log("start", scenario=self.scenario, session_id=self.session_id, resumed=self.resumed,
                 history=self.history, **extra)
        self.start_logged = True
        for rel, text in (self.directive.get("write_early") or {}).items():  # work done before a failure
            self._write_file(rel, str(text).encode("utf-8"))
        echo = os.environ.get("FAKE_CLI_ECHO_ENV")
        if echo:  # a careless CLI that prints a secret: the scheduler must scrub it from what it records
            out(f"debug: {echo}={os.environ.get(echo, '')}\n")
            err(f"debug: {echo}={os.environ.get(echo, '')}\n")
        for rel, target in (self.directive.get("symlink") or {}).items():
            path = os.path.join(os.getcwd(), rel)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            os.symlink(str(target), path)
        if self.directive.get("swap_workdir"):  # replace the work dir by a symlink (we keep working in it)
            here = os.getcwd()
            os.rename(here, here + ".gone")
            os.symlink(str(self.directive["swap_workdir"]), here)
        if self.directive.get("detach"):
            self.log("detached", detached_pid=detach_forever())
        if self.directive.get("hostile"):
            self._write_file(str(self.directive["hostile"]), json.dumps(
                snoop(probes=[str(p) for p in self.directive.get("probe") or []]), indent=1).encode())
        for fd, key in ((1, "stdout_raw_b64"), (2, "stderr_raw_b64")):
            if self.directive.get(key):
                _write_all(fd, base64.b64decode(self.directive[key]))
        emit_filler(1, int(self.directive.get("stdout_bytes", 0)), "stdout")
        emit_filler(2, int(self.directive.get("stderr_bytes", 0)), "stderr")
        dump = self.directive.get("dump_env")
        if dump:
            self._write_file(str(dump), json.dumps(dict(os.environ), indent=2, sort_keys=True).encode())
        listing = self.directive.get("list_files")
        if listing:
            self._write_file(str(listing), json.dumps(list_files(os.getcwd()), indent=1, sort_keys=True).encode())
        if self.directive.get("sleep"):
            time.sleep(float(self.directive["sleep"]))
        if self.scenario == "hang":
            err("Working on it... ")  # a partial progress line: no newline
            while True:
                signal.pause()
        if self.scenario == "exit":
            text = str(self.directive.get("stderr", ""))
            if text:
                err(text if text.endswith("\n") else text + "\n")
            raise Exit(int(self.directive.get("exit_code", 3)))
        if self.scenario == "garbage":
            emit_garbage(trace_to_stdout=self.tool == "gemini")

    def _write_file(self, rel: str, data: bytes) -> None:
        path = os.path.join(os.getcwd(), rel)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)

    def apply_writes(self) -> list[str]:
        """The `write` / `write_bytes_b64` side effects; done only when the run succeeds."""
        written = []
        for rel, text in (self.directive.get("write") or {}).items():
            self._write_file(rel, str(text).encode("utf-8"))
            written.append(rel)
        for rel, b64 in (self.directive.get("write_bytes_b64") or {}).items():
            self._write_file(rel, base64.b64decode(b64))
            written.append(rel)
        for name_b64, text in (self.directive.get("write_raw_names") or {}).items():
            with open(os.path.join(os.getcwdb(), base64.b64decode(name_b64)), "wb") as handle:
                handle.write(str(text).encode())
            written.append(name_b64)
        return written

    @property
    def ok(self) -> bool:
        return self.scenario in ("ok", "garbage")


def list_files(top: str) -> dict:
    """Every regular file under `top` (symlinks not followed) as {relative path: its text (UTF-8, errors
    replaced)}: what the CLI found in its work dir."""
    found = {}
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, top)] = handle.read().decode("utf-8", "replace")
    return found


def detach_forever() -> int:
    """A descendant that escapes the CLI's process group and session (double fork + setsid) and outlives it,
    holding stdout and stderr open: what a careless or hostile tool leaves behind. Returns its pid."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # child: start the grandchild, report its pid, exit at once
        os.close(read_end)
        os.setsid()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL (or the namespace's end) stops it
            while True:
                time.sleep(3600)
        os.write(write_end, str(pid).encode())
        os._exit(0)
    os.close(write_end)
    pid = int(os.read(read_end, 32) or b"0")
    os.close(read_end)
    os.wait()
    return pid


SNOOP_LIMIT = 4 * 1024 * 1024
SNOOP_SKIP = ("/proc", "/sys", "/dev", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc")


def snoop(*, probes: list[str]) -> dict:
    """What a hostile prompt would look for: every environment it can read under /proc, every file around its
    work dir (each parent, walked), in its HOME and /tmp, and the paths in `probes`."""
    found: dict = {"environ": {}, "files": {}, "listed": [], "probes": {}, "errors": 0}
    budget = [SNOOP_LIMIT]

    def read(path: str) -> str | None:
        try:
            with open(path, "rb") as handle:
                data = handle.read(min(budget[0], 256 * 1024))
        except OSError:
            found["errors"] += 1
            return None
        budget[0] -= len(data)
        return data.decode(errors="replace")

    for entry in os.listdir("/proc"):
        if entry.isdigit() and (text := read(f"/proc/{entry}/environ")) is not None:
            found["environ"][entry] = text.replace("\x00", "\n")

    def walk(top: str, depth: int) -> None:
        if depth < 0 or budget[0] <= 0 or (top.startswith(SNOOP_SKIP) and top != "/"):
            return
        try:
            names = os.listdir(top)
        except OSError:
            found["errors"] += 1
            return
        found["listed"].append(top)
        for name in names:
            path = os.path.join(top, name)
            if os.path.isdir(path) and not os.path.islink(path):
                walk(path, depth - 1)
            elif os.path.isfile(path) and path not in found["files"] and (text := read(path)) is not None:
                found["files"][path] = text

    here = os.getcwd()
    tops = [here, os.environ.get("HOME", ""), "/tmp", "/run", "/"]
    parent = here
    while parent != "/":
        parent = os.path.dirname(parent)
        tops.append(parent)
    for top in filter(None, tops):
        walk(top, 6)
    for path in probes:
        found["probes"][path] = (read(path) if os.path.isfile(path) else
                                 sorted(os.listdir(path)) if os.path.isdir(path) else None)
    return found


def read_all_stdin() -> str:
    try:
        data = sys.stdin.buffer.read()
    except (OSError, ValueError, AttributeError):
        return ""
    return data.decode("utf-8", "replace")


def stdin_is_tty() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


def split_eq(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        name, value = arg.split("=", 1)
        return name, value
    return arg, None


# ----------------------------------------------------------------------------- claude

CLAUDE_VALUE_OPTS = {
    "--output-format": "format",
    "--model": "model",
    "--permission-mode": "mode",
    "--max-turns": "turns",
    "--max-budget-usd": "amount",
    "--append-system-prompt": "prompt",
    "--setting-sources": "sources",
    "--fallback-model": "model",
    "--resume": "session",
    "-r": "session",
}
CLAUDE_VARIADIC = {
    "--allowedTools": "tools...",
    "--allowed-tools": "tools...",
    "--disallowedTools": "tools...",
    "--disallowed-tools": "tools...",
    "--tools": "tools...",
    "--add-dir": "directories...",
}
CLAUDE_FLAGS = {
    "-p",
    "--print",
    "--verbose",
    "--dangerously-skip-permissions",
    "-h",
    "--help",
    "-v",
    "--version",
}
CLAUDE_CHOICES = {
    "--output-format": ("text", "json", "stream-json"),
    "--permission-mode": ("acceptEdits", "auto", "bypassPermissions", "default", "dontAsk", "plan"),
}
CLAUDE_USAGE = "Usage: claude [options] [command] [prompt]\n"


def _commander_error(run: Run, message: str) -> Exit:
    return run.reject(1, f"error: {message}")


def parse_claude(run: Run, argv: list[str]) -> dict:
    opts: dict = {"variadic": {}}
    positionals: list[str] = []
    i = 0
    variadic: str | None = None
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positionals.extend(argv[i:])
            break
        if variadic and not arg.startswith("-"):
            opts["variadic"].setdefault(variadic, []).append(arg)
            continue
        variadic = None
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            continue
        name, value = split_eq(arg)
        if arg in CLAUDE_FLAGS:
            opts[arg.lstrip("-")] = True
            continue
        if name in CLAUDE_VALUE_OPTS or name in CLAUDE_VARIADIC:
            label = CLAUDE_VALUE_OPTS.get(name) or CLAUDE_VARIADIC[name]
            if value is None:
                if i >= len(argv):
                    raise _commander_error(run, f"option '{name} <{label}>' argument missing")
                value = argv[i]
                i += 1
                if name in CLAUDE_VARIADIC:
                    variadic = name  # space form swallows following non-option words (the prompt too)
            if name in CLAUDE_CHOICES and value not in CLAUDE_CHOICES[name]:
                allowed = ", ".join(CLAUDE_CHOICES[name])
                raise _commander_error(
                    run,
                    f"option '{name} <{label}>' argument '{value}' is invalid. "
                    f"Allowed choices are {allowed}.",
                )
            if name == "--max-turns":
                try:
                    float(value)
                except ValueError:
                    raise _commander_error(
                        run, f"option '{name} <{label}>' argument '{value}' is invalid."
                    ) from None
            if name == "--max-budget-usd":  # 2.1.197: its own check, exit 1 (plus a stack trace we leave out)
                try:
                    positive = float(value) > 0
                except ValueError:
                    positive = False
                if not positive:
                    raise _commander_error(run, "--max-budget-usd must be a positive number greater than 0")
            if name in CLAUDE_VARIADIC:
                opts["variadic"].setdefault(name, []).append(value)
            else:
                opts[name.lstrip("-")] = value
            continue
        raise _commander_error(run, f"unknown option '{arg}'")
    if len(positionals) > 1:
        raise _commander_error(run, f"too many arguments. Expected 1 argument but got {len(positionals)}.")
    opts["prompt"] = positionals[0] if positionals else None
    return opts


def claude_main(run: Run, argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    opts = parse_claude(run, argv)
    if opts.get("version") or opts.get("v"):
        out(VERSIONS["claude"] + "\n")
        return 0
    if opts.get("help") or opts.get("h"):
        out(CLAUDE_USAGE)
        return 0
    run.model = opts.get("model")
    if "CLAUDECODE" in os.environ:
        raise run.reject(
            1,
            "Error: Claude Code cannot be launched inside another Claude Code session.\n"
            "Nested sessions share runtime resources and will crash all active sessions.\n"
            "To bypass this check, unset the CLAUDECODE environment variable.",
        )
    if not (opts.get("p") or opts.get("print")):
        raise run.reject(1, "fake claude: interactive mode is not supported; pass -p")
    fmt = opts.get("output-format", "text")
    if fmt == "stream-json" and not opts.get("verbose"):
        raise run.reject(1, "Error: When using --print, --output-format=stream-json requires --verbose")
    prompt = opts["prompt"]
    if prompt is None:
        prompt = "" if stdin_is_tty() else read_all_stdin()
    if not prompt.strip():
        raise run.reject(
            1, "Error: Input must be provided either through stdin or as a prompt argument when using --print"
        )
    run.set_prompt(prompt)
    if opts.get("resume") or opts.get("r"):
        run.resume(str(opts.get("resume") or opts.get("r")))
    run.begin()
    model = run.model or DEFAULT_MODELS["claude"]
    stream = fmt == "stream-json"

    def emit(obj: dict) -> None:
        if stream:
            out(jdump(obj) + "\n")

    emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": run.session_id,
          "tools": ["Bash", "Edit", "Read", "Write"], "mcp_servers": [], "model": model,
          "permissionMode": opts.get("permission-mode", "default"), "apiKeySource": "none",
          "claude_code_version": VERSIONS["claude"].split()[0], "uuid": str(uuid.uuid4())})
    budget = float(opts["max-budget-usd"]) if opts.get("max-budget-usd") is not None else None
    failure = None if run.ok else claude_failure(run)
    if failure is None:
        turns = run.tool_turns(
            lambda k: ("Bash", {"command": f"echo step {k}", "description": f"Run step {k}"}, f"step {k}\n"),
            lambda path, text: ("Write", {"file_path": os.path.join(os.getcwd(), path), "content": text},
                                f"File created successfully at: {os.path.join(os.getcwd(), path)}"),
        )
        spent = 0.0
        done_in = done_out = 0
        for number, turn in enumerate(turns, start=1):
            if turn["write"]:
                run.apply_writes()
            message_id = "msg_fake" + uuid.uuid4().hex[:20]
            usage = _claude_usage(*turn["usage"])
            blocks = [{"type": "text", "text": turn["text"]}]
            blocks += [{"type": "tool_use", "id": f"toolu_{number}_{i}", "name": name, "input": args}
                       for i, (name, args, _) in enumerate(turn["calls"])]
            for block in blocks:  # verbose stream-json: one event per content block, the same message id
                emit({"type": "assistant", "message": _claude_message(message_id, model, [block], usage, None),
                      "parent_tool_use_id": None, "session_id": run.session_id, "uuid": str(uuid.uuid4())})
            time.sleep(run.turn_delay)
            emit({"type": "user", "message": {"role": "user", "content": [
                {"tool_use_id": f"toolu_{number}_{i}", "type": "tool_result", "content": output, "is_error": False}
                for i, (_, _, output) in enumerate(turn["calls"])]},
                "parent_tool_use_id": None, "session_id": run.session_id, "uuid": str(uuid.uuid4())})
            spent += claude_cost(*turn["usage"])
            done_in, done_out = done_in + turn["usage"][0], done_out + turn["usage"][1]
            if budget is not None and spent >= budget:  # checked between turns, as claude does
                return claude_budget_stop(run, fmt, emit, model, number, spent, (done_in, done_out), budget)
        if not turns or not turns[-1]["write"]:
            run.apply_writes()  # files of another kind (write_raw_names) with no tool turn of their own
        result_text = run.answer
        in_tok, out_tok = run.input_tokens, run.output_tokens
        cost = claude_cost(in_tok, out_tok)
        is_error, api_status, code = False, None, 0
        final_usage = _claude_usage(*run.final_usage())
        num_turns = len(turns) + 1
    else:
        result_text, api_status, code = failure
        in_tok = out_tok = 0
        cost = 0.0
        is_error = True
        final_usage = _claude_usage(0, 0)
        num_turns = 1
    result = claude_result(run, model, subtype="success", is_error=is_error, num_turns=num_turns, cost=cost,
                           tokens=(in_tok, out_tok))
    result["result"] = result_text
    if api_status is not None:
        result["api_error_status"] = api_status
    if fmt == "text":
        out(result_text + "\n")
    elif fmt == "json":
        out(jdump(result) + "\n")
    else:
        message = _claude_message("msg_fake" + uuid.uuid4().hex[:20], model if failure is None else "<synthetic>",
                                  [{"type": "text", "text": result_text}], final_usage,
                                  "end_turn" if failure is None else "stop_sequence")
        assistant: dict = {"type": "assistant", "message": message, "session_id": run.session_id}
        if failure is not None:
            assistant["error"] = "rate_limit" if api_status == 429 else "unknown"
        emit(assistant)
        if run.scenario == "rate_limit":
            info = {
                "status": "rejected",
                "resetsAt": int(time.time() + run.reset_in),
                "rateLimitType": "five_hour",
                "overageStatus": "rejected",
                "isUsingOverage": False,
            }
        else:
            info = {
                "status": "allowed",
                "resetsAt": int(time.time() + 5 * 3600),
                "rateLimitType": "five_hour",
            }
        emit({"type": "rate_limit_event", "rate_limit_info": info, "session_id": run.session_id})
        emit(result)
    return code


def claude_cost(in_tok: int, out_tok: int) -> float:
    return 0.000003 * in_tok + 0.000015 * out_tok


def _claude_usage(in_tok: int, out_tok: int) -> dict:
    return {"input_tokens": in_tok, "output_tokens": out_tok, "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0, "service_tier": "standard"}


def _claude_message(message_id: str, model: str, content: list, usage: dict, stop_reason: str | None) -> dict:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "usage": usage}


def claude_result(run: Run, model: str, *, subtype: str, is_error: bool, num_turns: int, cost: float,
                  tokens: tuple[int, int]) -> dict:
    in_tok, out_tok = tokens
    denials = [
        {"tool_name": str(t), "tool_use_id": f"toolu_fake{n}", "tool_input": {}}
        for n, t in enumerate(run.directive.get("deny") or [])
    ]
    return {
        "type": "result",
        "subtype": subtype,
        "is_error": is_error,
        "duration_ms": run.duration_ms(),
        "duration_api_ms": run.duration_ms(),
        "num_turns": num_turns,
        "session_id": run.session_id,
        "total_cost_usd": cost,
        "usage": _claude_usage(in_tok, out_tok),
        "modelUsage": {
            model: {
                "inputTokens": in_tok,
                "outputTokens": out_tok,
                "cacheReadInputTokens": 0,
                "cacheCreationInputTokens": 0,
                "webSearchRequests": 0,
                "costUSD": cost,
                "contextWindow": 200000,
            }
        },
        "permission_denials": denials,
        "uuid": str(uuid.uuid4()),
    }


def claude_budget_stop(run: Run, fmt: str, emit, model: str, turns: int, spent: float, tokens: tuple[int, int],
                       budget: float) -> int:
    """--max-budget-usd reached between turns: a result with subtype error_max_budget_usd (no `result` text,
    an `errors` list), exit 1; the `write` files are not written."""
    result = claude_result(run, model, subtype="error_max_budget_usd", is_error=True, num_turns=turns, cost=spent,
                           tokens=tokens)
    result["errors"] = [f"Reached maximum budget (${budget:g})"]
    if fmt == "text":
        err(f"Error: Reached maximum budget (${budget:g})\n")
    elif fmt == "json":
        out(jdump(result) + "\n")
    else:
        emit(result)
    return 1


def claude_reset_text(ts: float) -> str:
    t = dt.datetime.fromtimestamp(ts, dt.timezone.utc)  # noqa: UP017 - also runs on older python3
    hour = t.hour % 12 or 12
    ampm = "am" if t.hour < 12 else "pm"
    clock = f"{hour}{ampm}" if t.minute == 0 else f"{hour}:{t.minute:02d}{ampm}"
    return f"{clock} (UTC)"


def claude_failure(run: Run) -> tuple[str, int | None, int]:
    """(result text, api_error_status, exit code) of a failed claude run."""
    s = run.scenario
    if s == "rate_limit":
        text = run.directive.get("limit_message") or (
            "You've hit your session limit · resets " + claude_reset_text(time.time() + run.reset_in)
        )
        return text, 429, 1
    if s == "rate_limit_api":
        return (
            "API Error: Request rejected (429) · This request would exceed your account's rate limit. "
            "Please try again later.",
            429,
            1,
        )
    if s == "overloaded":
        body = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
        return f"API Error: 529 {body}", 529, 1
    if s == "provider_error":
        st = run.http_status
        body = '{"type":"error","error":{"type":"api_error","message":"Internal server error"}}'
        return f"API Error: {st} {body}", st, 1
    if s == "auth":
        return "Invalid API key · Please run /login", 401, 1
    if s == "credit":
        return "Credit balance is too low", None, 0  # the lying exit code: only is_error tells
    raise AssertionError(s)


# ----------------------------------------------------------------------------- codex

CODEX_VALUE_OPTS = {
    "-m": ("--model", "MODEL"),
    "--model": ("--model", "MODEL"),
    "-s": ("--sandbox", "SANDBOX_MODE"),
    "--sandbox": ("--sandbox", "SANDBOX_MODE"),
    "-C": ("--cd", "DIR"),
    "--cd": ("--cd", "DIR"),
    "-c": ("--config", "key=value"),
    "--config": ("--config", "key=value"),
    "-o": ("--output-last-message", "FILE"),
    "--output-last-message": ("--output-last-message", "FILE"),
    "--color": ("--color", "COLOR"),
    "-p": ("--profile", "CONFIG_PROFILE"),
    "--profile": ("--profile", "CONFIG_PROFILE"),
}
CODEX_FLAGS = {
    "--json": "--json",
    "--skip-git-repo-check": "--skip-git-repo-check",
    "--ephemeral": "--ephemeral",
    "--ignore-user-config": "--ignore-user-config",
    "--dangerously-bypass-approvals-and-sandbox": "--dangerously-bypass-approvals-and-sandbox",
    "--yolo": "--dangerously-bypass-approvals-and-sandbox",
    "-h": "--help",
    "--help": "--help",
}
CODEX_CHOICES = {
    "--sandbox": ("read-only", "workspace-write", "danger-full-access"),
    "--color": ("always", "never", "auto"),
}
CODEX_USAGE = "Usage: codex exec [OPTIONS] [PROMPT] [COMMAND]"


def _clap_error(run: Run, message: str, tip: str = "") -> Exit:
    text = f"error: {message}\n\n"
    if tip:
        text += f"  tip: {tip}\n\n"
    text += f"{CODEX_USAGE}\n\nFor more information, try '--help'.\n"
    return run.reject(2, text)


CODEX_NOT_ON_RESUME = frozenset({"--sandbox", "--color", "--cd", "--profile"})


def parse_codex(run: Run, argv: list[str], *, resuming: bool = False) -> dict:
    opts: dict = {"--config": []}
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positionals.extend(argv[i:])
            break
        if arg == "resume" and not positionals and "resume" not in opts:
            # `codex exec [OPTIONS] resume [OPTIONS] [SESSION_ID] [PROMPT]`: exec's own options go before
            # `resume`; after it only resume's (no --sandbox, --color or --cd there).
            rest = parse_codex(run, argv[i:], resuming=True)
            words = [rest["prompt"], *rest.pop("more", [])]
            words = [w for w in words if w is not None]
            opts["--config"] += rest.pop("--config")
            opts.update({k: v for k, v in rest.items() if k != "prompt"})
            opts["resume"] = words[0] if words else ""
            positionals.extend(words[1:2])
            break
        if arg == "-" or not arg.startswith("-"):
            positionals.append(arg)
            continue
        if arg in CODEX_FLAGS:
            opts[CODEX_FLAGS[arg]] = True
            continue
        name, value = split_eq(arg)
        if name not in CODEX_VALUE_OPTS and len(arg) > 2 and arg[1] != "-" and arg[:2] in CODEX_VALUE_OPTS:
            name, value = arg[:2], arg[2:].removeprefix("=")  # -mMODEL / -m=MODEL
        if resuming and name in CODEX_VALUE_OPTS and CODEX_VALUE_OPTS[name][0] in CODEX_NOT_ON_RESUME:
            raise _clap_error(
                run, f"unexpected argument '{arg}' found", f"to pass '{arg}' as a value, use '-- {arg}'"
            )
        if name in CODEX_VALUE_OPTS:
            canon, label = CODEX_VALUE_OPTS[name]
            if value is None:
                if i >= len(argv):
                    raise _clap_error(
                        run, f"a value is required for '{canon} <{label}>' but none was supplied"
                    )
                value = argv[i]
                i += 1
            if canon in CODEX_CHOICES and value not in CODEX_CHOICES[canon]:
                possible = ", ".join(CODEX_CHOICES[canon])
                raise run.reject(
                    2,
                    f"error: invalid value '{value}' for '{canon} <{label}>'\n"
                    f"  [possible values: {possible}]\n\n"
                    "For more information, try '--help'.\n",
                )
            if canon == "--config":
                opts["--config"].append(value)
            else:
                opts[canon] = value
            continue
        raise _clap_error(
            run, f"unexpected argument '{arg}' found", f"to pass '{arg}' as a value, use '-- {arg}'"
        )
    if resuming:
        if len(positionals) > 2:
            raise _clap_error(run, f"unexpected argument '{positionals[2]}' found")
        opts["prompt"] = positionals[0] if positionals else None
        opts["more"] = positionals[1:]
        return opts
    if len(positionals) > 1:
        raise _clap_error(run, f"unexpected argument '{positionals[1]}' found")
    opts["prompt"] = positionals[0] if positionals else None
    return opts


def inside_git_work_tree(path: str) -> bool:
    path = os.path.realpath(path)
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def codex_main(run: Run, argv: list[str]) -> int:
    if argv and argv[0] in ("--version", "-V"):
        out(VERSIONS["codex"] + "\n")
        return 0
    if not argv or argv[0] not in ("exec", "e"):
        first = argv[0] if argv else ""
        raise run.reject(
            2,
            f"error: fake codex supports only the `exec` subcommand (got {first!r})\n\n"
            "Usage: codex [OPTIONS] [PROMPT]\n       codex [OPTIONS] <COMMAND> [ARGS]\n",
        )
    opts = parse_codex(run, argv[1:])
    if opts.get("--help"):
        out(CODEX_USAGE + "\n")
        return 0
    run.model = opts.get("--model")
    for override in opts["--config"]:
        if "=" not in override:
            raise run.reject(1, f"Error parsing -c overrides: Invalid override (missing '='): {override}")
    if opts.get("--profile"):
        raise run.reject(1, f"Error: config profile `{opts['--profile']}` not found")
    origin = os.getcwd()
    workdir = opts.get("--cd") or origin
    if not os.path.isdir(workdir):
        raise run.reject(1, f"Error: No such file or directory (os error 2): {workdir}")
    if not opts.get("--skip-git-repo-check") and not inside_git_work_tree(workdir):
        raise run.reject(1, "Not inside a trusted directory and --skip-git-repo-check was not specified.")
    prompt = opts["prompt"]
    if prompt is None or prompt == "-":
        if prompt is None and stdin_is_tty():
            raise run.reject(
                1, "No prompt provided. Either specify one as an argument or pipe the prompt into stdin."
            )
        prompt = read_all_stdin()
        if not prompt.strip():
            raise run.reject(1, "No prompt provided via stdin.")
    elif not stdin_is_tty():
        extra = read_all_stdin()  # the real codex reads a non-TTY stdin to EOF even with a prompt argument
        if extra.strip():
            prompt = f"{prompt}\n\n<stdin>\n{extra}\n</stdin>"
    os.chdir(workdir)
    run.set_prompt(prompt)
    if opts.get("resume") is not None:
        if not opts["resume"]:
            raise run.reject(1, "Error: no session id given and --last not set")
        run.resume(opts["resume"])
    model = run.model or DEFAULT_MODELS["codex"]
    as_json = bool(opts.get("--json"))
    thread_id = run.session_id
    if not as_json:
        sandbox = opts.get("--sandbox", "read-only")
        if opts.get("--dangerously-bypass-approvals-and-sandbox"):
            sandbox = "danger-full-access"
        err(
            f"OpenAI Codex v{VERSIONS['codex'].split()[-1]} (research preview)\n--------\n"
            f"workdir: {workdir}\nmodel: {model}\nprovider: openai\napproval: never\nsandbox: {sandbox}\n"
            f"session id: {thread_id}\n--------\nuser\n{run.prompt}\n\n"
        )
    run.begin()

    def event(obj: dict) -> None:
        if as_json:
            out(jdump(obj) + "\n")

    event({"type": "thread.started", "thread_id": thread_id})
    failure = None if run.ok else codex_failure(run)
    if failure is not None:
        event({"type": "turn.started"})
        notices, message = failure
        for n in notices:
            event({"type": "error", "message": n})
            if not as_json:
                err(f"ERROR: {n}\n")
        event({"type": "error", "message": message})
        event({"type": "turn.failed", "error": {"message": message}})
        if not as_json:
            err(f"ERROR: {message}\n")
        return 1
    turns = run.tool_turns(lambda k: ("command", f"bash -lc 'echo step {k}'", f"step {k}\n"), lambda p, t: p)
    n = 0

    def item(kind: str, **fields: object) -> dict:
        nonlocal n
        n += 1
        return {"id": f"item_{n - 1}", "type": kind, **fields}

    def usage_of(tokens: tuple[int, int]) -> dict:
        return {"input_tokens": tokens[0], "cached_input_tokens": 0, "output_tokens": tokens[1]}

    # `turns`: each step is a turn of its own here (a real `codex exec` runs one turn; a resumed session runs
    # more), so that usage arrives while the run goes on.
    for turn in (t for t in turns if not t["write"]):
        event({"type": "turn.started"})
        event({"type": "item.completed", "item": item("agent_message", text=turn["text"])})
        (_, command, output), = turn["calls"]
        started = item("command_execution", command=command, aggregated_output="", exit_code=None,
                       status="in_progress")
        event({"type": "item.started", "item": started})
        time.sleep(run.turn_delay)
        event({"type": "item.completed", "item": {**started, "aggregated_output": output, "exit_code": 0,
                                                  "status": "completed"}})
        event({"type": "turn.completed", "usage": usage_of(turn["usage"])})
    event({"type": "turn.started"})
    event({"type": "item.completed", "item": item("reasoning", text="**Working on it**")})
    if not as_json:
        err("thinking\n**Working on it**\n\n")
    final_in, final_out = run.final_usage()
    writing = [t for t in turns if t["write"]]
    written = run.apply_writes()
    if writing:
        final_in, final_out = final_in + writing[0]["usage"][0], final_out + writing[0]["usage"][1]
        event({"type": "item.completed", "item": item("agent_message", text=writing[0]["text"])})
        changes = [{"path": os.path.join(os.getcwd(), p), "kind": "add"} for p in written if p in run.written_paths]
        event({"type": "item.completed", "item": item("file_change", changes=changes, status="completed")})
    answer = run.answer
    event({"type": "item.completed", "item": item("agent_message", text=answer)})
    event({"type": "turn.completed", "usage": usage_of((final_in, final_out))})
    if not as_json:
        err(f"codex\n{answer}\n\ntokens used\n{run.input_tokens + run.output_tokens}\n")
        out(answer + "\n")
    if opts.get("--output-last-message"):
        with open(os.path.join(origin, opts["--output-last-message"]), "w", encoding="utf-8") as fh:
            fh.write(answer)
    return 0


def codex_reset_text(ts: float) -> str:
    lt, now = time.localtime(ts), time.localtime()
    clock = f"{lt.tm_hour % 12 or 12}:{lt.tm_min:02d} {'AM' if lt.tm_hour < 12 else 'PM'}"
    if (lt.tm_year, lt.tm_yday) == (now.tm_year, now.tm_yday):
        return clock
    day = lt.tm_mday
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{time.strftime('%b', lt)} {day}{suffix}, {lt.tm_year} {clock}"


def codex_failure(run: Run) -> tuple[list[str], str]:
    """(transient 'Reconnecting' notices, terminal message) of a failed codex turn."""
    s = run.scenario
    retrying = [f"Reconnecting... {k}/5" for k in (1, 2)]
    if s == "rate_limit":
        return [], (
            "You've hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
            "https://chatgpt.com/codex/settings/usage to purchase more credits or try again at "
            f"{codex_reset_text(time.time() + run.reset_in)}."
        )
    if s == "rate_limit_api":
        return retrying, "exceeded retry limit, last status: 429 Too Many Requests, request id: abc"
    if s == "overloaded":
        return retrying, "We're currently experiencing high demand, which may cause temporary errors."
    if s == "provider_error":
        st = run.http_status
        return (
            retrying,
            f"exceeded retry limit, last status: {st} {HTTP_REASONS.get(st, 'Server Error')}, "
            "request id: abc",
        )
    if s == "auth":
        return [], "exceeded retry limit, last status: 401 Unauthorized, request id: abc"
    if s == "credit":
        return [], "Quota exceeded. Check your plan and billing details."
    raise AssertionError(s)


# ----------------------------------------------------------------------------- gemini

GEMINI_VALUE_OPTS = {
    "-p": "prompt",
    "--prompt": "prompt",
    "-m": "model",
    "--model": "model",
    "-o": "output-format",
    "--output-format": "output-format",
    "--approval-mode": "approval-mode",
    "-r": "resume",
    "--resume": "resume",
}
GEMINI_FLAGS = {
    "-y": "yolo",
    "--yolo": "yolo",
    "-s": "sandbox",
    "--sandbox": "sandbox",
    "--skip-trust": "skip-trust",
    "-h": "help",
    "--help": "help",
    "-v": "version",
    "--version": "version",
}
GEMINI_CHOICES = {
    "output-format": ("text", "json", "stream-json"),
    "approval-mode": ("default", "auto_edit", "yolo", "plan"),
}
GEMINI_USAGE = """Usage: gemini [options] [command]

Gemini CLI - Launch an interactive CLI, use -p/--prompt for non-interactive mode

Options:
  -m, --model          Model                                                        [string]
  -p, --prompt         Prompt. Appended to input on stdin (if any).                 [string]
  -s, --sandbox        Run in sandbox?                                             [boolean]
  -y, --yolo           Automatically accept all actions (deprecated)               [boolean]
      --approval-mode  Set the approval mode
                            [string] [choices: "default", "auto_edit", "yolo", "plan"]
  -o, --output-format  The format of the CLI output.
                                     [string] [choices: "text", "json", "stream-json"]
      --skip-trust     Trust the current workspace for this session                [boolean]
  -v, --version        Show version number                                         [boolean]
  -h, --help           Show help                                                   [boolean]
"""


def _yargs_error(run: Run, message: str) -> Exit:
    return run.reject(1, f"{GEMINI_USAGE}\n{message}\n", summary=message)


def parse_gemini(run: Run, argv: list[str]) -> dict:
    opts: dict = {}
    positionals: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positionals.extend(argv[i:])
            break
        if arg == "-" or not arg.startswith("-"):
            positionals.append(arg)
            continue
        if arg in GEMINI_FLAGS:
            opts[GEMINI_FLAGS[arg]] = True
            continue
        name, value = split_eq(arg)
        if name in GEMINI_VALUE_OPTS:
            key = GEMINI_VALUE_OPTS[name]
            if value is None:
                if i >= len(argv) or (argv[i].startswith("-") and argv[i] != "-"):
                    raise _yargs_error(run, f"Not enough arguments following: {name.lstrip('-')}")
                value = argv[i]
                i += 1
            if key in GEMINI_CHOICES and value not in GEMINI_CHOICES[key]:
                choices = ", ".join(f'"{c}"' for c in GEMINI_CHOICES[key])
                raise _yargs_error(
                    run, f'Invalid values:\n  Argument: {key}, Given: "{value}", Choices: {choices}'
                )
            opts[key] = value
            continue
        unknown.append(name.lstrip("-"))
    if unknown:
        word = "argument" if len(unknown) == 1 else "arguments"
        raise _yargs_error(run, f"Unknown {word}: {', '.join(unknown)}")
    opts["positional"] = " ".join(positionals) if positionals else None
    return opts


def read_gemini_stdin() -> str:
    """Like gemini: a non-TTY stdin is read if data (or EOF) shows up within 500 ms."""
    if stdin_is_tty():
        return ""
    try:
        ready, _, _ = select.select([0], [], [], 0.5)
    except (OSError, ValueError):
        return ""
    return read_all_stdin() if ready else ""


def gemini_main(run: Run, argv: list[str]) -> int:
    # A gemini killed with SIGTERM exits 0 with empty stdout.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    opts = parse_gemini(run, argv)
    if opts.get("version"):
        out(VERSIONS["gemini"] + "\n")
        return 0
    if opts.get("help"):
        out(GEMINI_USAGE)
        return 0
    run.model = opts.get("model")
    if opts.get("yolo") and "approval-mode" in opts:
        raise run.reject(
            1, "Cannot use both --yolo (-y) and --approval-mode together. Use --approval-mode=yolo instead."
        )
    if opts.get("positional") is not None and "prompt" in opts:
        raise run.reject(1, "Cannot use both a positional prompt and the --prompt (-p) flag together")
    if not opts.get("skip-trust") and os.environ.get("GEMINI_CLI_TRUST_WORKSPACE") != "true":
        raise run.reject(
            55,
            "Gemini CLI is not running in a trusted directory. To proceed, either use `--skip-trust`, "
            "set the `GEMINI_CLI_TRUST_WORKSPACE=true` environment variable, or trust this directory in "
            "interactive mode.",
        )
    given = opts.get("prompt", opts.get("positional"))
    if given is None and stdin_is_tty():
        raise run.reject(1, "fake gemini: interactive mode is not supported; pass -p")
    piped = read_gemini_stdin()
    prompt = f"{piped}\n\n{given}" if piped and given else (piped or given or "")
    if not prompt.strip():
        raise run.reject(
            42,
            "No input provided via stdin. Input can be provided by piping data into gemini or using the "
            "--prompt option.",
        )
    run.set_prompt(prompt)
    if opts.get("resume"):
        run.resume(str(opts["resume"]))
    fmt = opts.get("output-format", "text")
    model = run.model or DEFAULT_MODELS["gemini"]
    stream = fmt == "stream-json"

    def emit(obj: dict) -> None:
        if stream:
            out(jdump({"type": obj.pop("type"), "timestamp": _iso_now(), **obj}) + "\n")

    # A missing auth method is found before the session starts: no stream at all, the message on stderr.
    if not (run.scenario == "auth" and run.directive.get("auth_variant") == "no_auth"):
        emit({"type": "init", "session_id": run.session_id, "model": model})
        emit({"type": "message", "role": "user", "content": run.prompt})
    run.begin()
    failure = None if run.ok else gemini_failure(run)
    if failure is not None:
        return gemini_fail(run, fmt, *failure)
    turns = run.tool_turns(
        lambda k: ("run_shell_command", {"command": f"echo step {k}", "description": f"Run step {k}"}, f"step {k}"),
        lambda path, text: ("write_file", {"file_path": os.path.join(os.getcwd(), path), "content": text},
                            f"Successfully created and wrote to new file: {os.path.join(os.getcwd(), path)}."),
    )
    tool_calls = 0
    for turn in turns:
        if turn["write"]:
            run.apply_writes()
        emit({"type": "message", "role": "assistant", "content": turn["text"], "delta": True})
        ids = [f"{name}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}" for name, _, _ in turn["calls"]]
        for tool_id, (name, args, _) in zip(ids, turn["calls"], strict=True):
            emit({"type": "tool_use", "tool_name": name, "tool_id": tool_id, "parameters": args})
        time.sleep(run.turn_delay)
        for tool_id, (_, _, output) in zip(ids, turn["calls"], strict=True):
            emit({"type": "tool_result", "tool_id": tool_id, "status": "success", "output": output})
        tool_calls += len(ids)
    if not turns or not turns[-1]["write"]:
        run.apply_writes()  # files of another kind (write_raw_names) with no tool turn of their own
    answer = run.answer
    models = _gemini_model_stats(run, model)
    if fmt == "text":
        out(answer + "\n")
    elif fmt == "json":
        doc = {
            "session_id": run.session_id,
            "response": answer,
            "stats": {
                "models": models,
                "tools": {
                    "totalCalls": 0,
                    "totalSuccess": 0,
                    "totalFail": 0,
                    "totalDurationMs": 0,
                    "totalDecisions": {"accept": 0, "reject": 0, "modify": 0, "auto_accept": 0},
                    "byName": {},
                },
                "files": {"totalLinesAdded": 0, "totalLinesRemoved": 0},
            },
        }
        out(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        out(
            jdump(
                {
                    "type": "message",
                    "timestamp": _iso_now(),
                    "role": "assistant",
                    "content": answer,
                    "delta": True,
                }
            )
            + "\n"
        )
        stats = {
            "total_tokens": run.input_tokens + run.output_tokens,
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
            "cached": 0,
            "input": run.input_tokens,
            "duration_ms": run.duration_ms(),
            "tool_calls": tool_calls,
            "models": {
                name: {"total_tokens": m["tokens"]["total"], "input_tokens": m["tokens"]["prompt"],
                       "output_tokens": m["tokens"]["candidates"], "cached": 0, "input": m["tokens"]["input"]}
                for name, m in models.items()
            },
        }
        out(jdump({"type": "result", "timestamp": _iso_now(), "status": "success", "stats": stats}) + "\n")
    return 0


def _iso_now() -> str:
    now = dt.datetime.now(dt.timezone.utc)  # noqa: UP017 - also runs on older python3
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _gemini_model_stats(run: Run, model: str) -> dict:
    def entry(inp: int, outp: int) -> dict:
        return {
            "api": {"totalRequests": 1, "totalErrors": 0, "totalLatencyMs": run.duration_ms()},
            "tokens": {
                "input": inp,
                "prompt": inp,
                "candidates": outp,
                "total": inp + outp,
                "cached": 0,
                "thoughts": 0,
                "tool": 0,
            },
        }

    inp, outp = run.input_tokens, run.output_tokens
    if not run.directive.get("two_models"):
        return {model: entry(inp, outp)}
    # Split so that the sums over both models equal the single-model numbers.
    return {model: entry(inp - inp // 2, outp - outp // 2), SECOND_GEMINI_MODEL: entry(inp // 2, outp // 2)}


def gemini_failure(run: Run) -> tuple[int, int, str, str]:
    """(exit code in JSON modes, error code for the JSON, error type, message) of a failed gemini run."""
    s = run.scenario
    if s == "rate_limit":
        r = run.reset_in
        secs = f"{int(r)}" if r == int(r) else f"{r:.2f}"
        msg = (
            "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. "
            f"Please retry in {secs}s."
        )
        return 429 % 256, 429, "RetryableQuotaError", msg
    if s == "rate_limit_api":
        msg = (
            '[API Error: {"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).",'
            '"status":"RESOURCE_EXHAUSTED"}}]'
        )
        return 429 % 256, 429, "ApiError", msg
    if s == "overloaded":
        msg = (
            '[API Error: {"error":{"code":503,"message":"The model is overloaded. Please try again later.",'
            '"status":"UNAVAILABLE"}}]'
        )
        return 503 % 256, 503, "ApiError", msg
    if s == "provider_error":
        st = run.http_status
        body = f'{{"code":{st},"message":"Internal error encountered.","status":"INTERNAL"}}'
        msg = f'[API Error: {{"error":{body}}}]'
        return st % 256, st, "ApiError", msg
    if s == "auth":
        if run.directive.get("auth_variant") == "no_auth":
            msg = (
                f"Please set an Auth method in your {os.path.expanduser('~')}/.gemini/settings.json "
                "or specify one of the following environment variables before running: GEMINI_API_KEY, "
                "GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_GENAI_USE_GCA"
            )
            return 41, 41, "FatalAuthenticationError", msg
        msg = (
            '[API Error: {"error":{"code":400,"message":"API key not valid. Please pass a valid API key.",'
            '"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}]'
        )
        return 400 % 256, 400, "ApiError", msg
    if s == "credit":
        msg = (
            "TerminalQuotaError: You exceeded your current quota, please check your plan and billing details."
        )
        return 429 % 256, 429, "TerminalQuotaError", msg
    raise AssertionError(s)


def gemini_fail(run: Run, fmt: str, exit_code: int, code: int, etype: str, message: str) -> int:
    if fmt == "json":
        doc = {"session_id": run.session_id, "error": {"type": etype, "message": message, "code": code}}
        err(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")  # stdout stays empty
        return exit_code
    if fmt == "stream-json" and exit_code != 41:
        stats = {
            "total_tokens": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cached": 0,
            "input": 0,
            "duration_ms": run.duration_ms(),
            "tool_calls": 0,
            "models": {},
        }
        out(
            jdump(
                {
                    "type": "result",
                    "timestamp": _iso_now(),
                    "status": "error",
                    "error": {"type": etype, "message": message},
                    "stats": stats,
                }
            )
            + "\n"
        )
        return exit_code
    if exit_code == 41:
        err(message + "\n")
        return 41
    err(f"{message}\nAn unexpected critical error occurred:[object Object]\n")
    return 1


# ----------------------------------------------------------------------------- entry point

MAINS = {"claude": claude_main, "codex": codex_main, "gemini": gemini_main}


def main(tool: str, argv: list[str]) -> int:
    run = Run(tool, argv)
    try:
        code = MAINS[tool](run, argv)
    except Exit as exc:
        code = exc.code
    if run.start_logged:  # a run that got as far as its start line also gets an end line
        run.log("end", exit=code, scenario=run.scenario)
    return code
