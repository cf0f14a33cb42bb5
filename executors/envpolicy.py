"""Which environment variables a group may give its CLI (its `env` and its `credentials` alike).

A group's variables reach a process that holds the account's key, so a variable that makes a program load or run
code of someone's choosing (`NODE_OPTIONS=--require …`, `LD_PRELOAD`, `PYTHONPATH`, `BASH_ENV`, …) would hand
that key to whoever set it. Those are refused, always. Everything else must be on the tool's allow-list: its
own settings (state dirs, base URLs, its keys), the locale, the time zone and proxies; a site adds names with
SCHEDULER_ENV_ALLOW (exact names or `PREFIX_*`), never a refused one.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from executors.base import ConfigurationError

# Loaders, interpreters and shells: each runs code named by the variable's value.
REFUSED_NAMES = frozenset({
    "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE", "NODE_V8_COVERAGE",
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS", "CDPATH", "ZDOTDIR",
    "GCONV_PATH", "HOSTALIASES", "LOCALDOMAIN", "RES_OPTIONS", "GLIBC_TUNABLES", "TMPDIR",
    "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
    "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYLIB", "RUBYOPT", "GEM_PATH", "GEM_HOME",
    "EDITOR", "VISUAL", "PAGER", "BROWSER", "SHELL", "PATH",
})
REFUSED_PREFIXES = ("LD_", "DYLD_", "PYTHON", "NPM_CONFIG_", "GIT_", "MALLOC_", "BUN_", "DENO_", "UV_", "PIP_")

COMMON_ALLOWED = (
    "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
    "TZ", "LANG", "LANGUAGE", "LC_*", "NO_COLOR", "FORCE_COLOR", "TERM", "CI",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR",
)
TOOL_ALLOWED: dict[str, tuple[str, ...]] = {
    "claude": ("ANTHROPIC_*", "CLAUDE_*", "DISABLE_*", "MAX_THINKING_TOKENS", "MAX_MCP_OUTPUT_TOKENS", "MCP_*",
               "BASH_DEFAULT_TIMEOUT_MS", "BASH_MAX_TIMEOUT_MS", "AWS_*", "CLOUD_ML_REGION", "VERTEX_REGION_*"),
    "codex": ("OPENAI_*", "CODEX_*", "AZURE_OPENAI_*", "RUST_LOG"),
    "gemini": ("GEMINI_*", "GOOGLE_*"),
}


def refused_reason(name: str) -> str | None:
    upper = name.upper()
    if upper in REFUSED_NAMES or upper.startswith(REFUSED_PREFIXES):
        return (f"{name} is refused: it makes a program load or run code named by its value, which would give "
                "the account's credentials to whoever sets it")
    return None


def check_env_names(tool: str, names: Iterable[str], *, extra_allowed: Iterable[str] = ()) -> None:
    """Raise ConfigurationError naming the first variable the tool's CLI may not be given."""
    patterns = (*COMMON_ALLOWED, *TOOL_ALLOWED.get(tool, ()), *extra_allowed)
    for name in names:
        reason = refused_reason(name)
        if reason:
            raise ConfigurationError(reason)
        if not any(fnmatch.fnmatchcase(name.upper(), pattern.upper()) for pattern in patterns):
            raise ConfigurationError(
                f"{name} is not a variable {tool} is known to read; allowed: "
                f"{', '.join(TOOL_ALLOWED.get(tool, ()))}, the locale, TZ, proxies and state dirs "
                "(a site adds names with SCHEDULER_ENV_ALLOW)")


def check_env(tool: str, *maps: Mapping[str, str], extra_allowed: Iterable[str] = ()) -> None:
    for mapping in maps:
        check_env_names(tool, mapping, extra_allowed=extra_allowed)
