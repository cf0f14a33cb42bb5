"""A private git host for the tests: `git http-backend` (git's own smart-HTTP CGI) behind a stdlib HTTP server that
demands HTTP Basic auth with one token, for fetch and push alike. Stdlib only.

    with GitHttpServer(root, token="t0k3n") as server:   # root holds bare repositories
        url = server.url("origin.git")

`requests` records (method, path, authorized) of every request; `hold()` makes requests wait until `release()`
(a host that stopped answering), bounded by `HOLD_SECONDS`.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
HOLD_SECONDS = 30.0


class GitHttpServer:
    def __init__(self, root: Path, *, token: str, username: str = "x-access-token") -> None:
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{username}:{token}".encode()).decode()
        self.username = username
        self.requests: list[tuple[str, str, bool]] = []
        self.waiting = threading.Event()  # a held request has arrived
        self._held = False
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def hold(self) -> None:
        self._held = True
        self._release.clear()

    def release(self) -> None:
        self._held = False
        self._release.set()

    def __enter__(self) -> GitHttpServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _handler(server: GitHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: the tests look at `requests`
            pass

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            body = self._body()
            authorized = self.headers.get("Authorization") == server.expected
            server.requests.append((self.command, self.path, authorized))
            if server._held:
                server.waiting.set()
                server._release.wait(HOLD_SECONDS)
            if not authorized:
                self._reply(401, {"WWW-Authenticate": 'Basic realm="git"', "Content-Type": "text/plain"},
                            b"authentication required\n")
                return
            status, headers, payload = self._backend(body)
            self._reply(status, headers, payload)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _backend(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
            parts = urlsplit(self.path)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(server.root),
                "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
                "GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command, "PATH_INFO": parts.path, "QUERY_STRING": parts.query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": server.username, "REMOTE_ADDR": "127.0.0.1",
            }
            if protocol := self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = protocol
            if encoding := self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = encoding
            done = subprocess.run([HTTP_BACKEND], input=body, env=env, capture_output=True, timeout=60, check=False)
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            if not _:
                head, _, payload = done.stdout.partition(b"\n\n")
            status, headers = 200, {}
            for line in head.decode(errors="replace").splitlines():
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers[name] = value.strip()
            return status, headers, payload

        def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
