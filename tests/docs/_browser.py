"""Headless Chromium over the DevTools protocol on a pipe, and a loopback static server.

The tools of ``tests/docs/test_browser.py``. Chromium's ``--remote-debugging-pipe`` reads
NUL-terminated JSON commands from fd 3 and writes replies and events to fd 4, so no websocket
client (and no package beyond the standard library and Debian's ``chromium``) is needed. Every
host name but 127.0.0.1 resolves to nothing, so a page that reaches for the network shows it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import http.server
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable: ``$SORTH_CHROMIUM``, else the first of CHROMIUM_NAMES on PATH."""
    if os.environ.get("SORTH_CHROMIUM"):
        return os.environ["SORTH_CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class LoopbackServer:
    """Serves ``root`` on http://127.0.0.1:<free port>/ from a daemon thread until ``close()``."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@dataclass
class PageLoad:
    """What one page load produced: the DOM report of COLLECT_JS and the DevTools events."""

    url: str
    dom: dict
    events: list[dict] = field(default_factory=list)
    error: str = ""  # a navigation failure (e.g. net::ERR_FILE_NOT_FOUND)


class Browser:
    """One headless Chromium with one tab; ``load(url, js)`` navigates and evaluates ``js``.

    Every wait is bounded by ``timeout`` seconds; ``close()`` ends the process it started.
    """

    def __init__(self, executable: str, profile_dir: Path, timeout: float = 30.0) -> None:
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()  # we write commands, Chromium reads them on fd 3
        self._evt_r, evt_w = os.pipe()  # Chromium writes on fd 4, we read
        args = [
            executable,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile_dir}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=1280,900",
        ]
        if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root (containers, CI)
            args.append("--no-sandbox")

        def wire_fds() -> None:  # in the child: commands on fd 3, events on fd 4
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(evt_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [*args, "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # keeps fds 3 and 4; Python's own fds are not inheritable
            preexec_fn=wire_fds,
        )
        os.close(cmd_r)
        os.close(evt_w)
        self._inbox: queue.Queue[dict | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attach = {"targetId": target, "flatten": True}
        self.session = self.call("Target.attachToTarget", attach)["sessionId"]
        self._sessions = {self.session}  # the tab's and its workers' (the search runs in one)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=self.session)
        auto = {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True}
        self.call("Target.setAutoAttach", auto, session=self.session)

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._evt_r, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))
        self._inbox.put(None)  # the browser went away

    def _next(self, deadline: float) -> dict | None:
        """The next message, or None when nothing arrived before ``deadline``."""
        try:
            message = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if message is None:
            raise RuntimeError(f"chromium exited (status {self.proc.poll()})")
        if "id" not in message:
            self.events.append(message)
        return message

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one DevTools command and wait (bounded) for its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = self._next(deadline)
            if reply is not None and reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
        raise TimeoutError(f"{method}: no reply in {self.timeout:.0f} s")

    def _mine(self, start: int) -> list[dict]:
        return [e for e in self.events[start:] if e.get("sessionId") in self._sessions]

    def _adopt_workers(self, start: int, adopted: set[str]) -> None:
        """Watch the console and network of every worker the page starts, then let it run."""
        for e in self._mine(start):
            if e["method"] == "Target.attachedToTarget":
                child = e["params"]["sessionId"]
                if child not in adopted:
                    adopted.add(child)
                    self._sessions.add(child)
                    for domain in ("Runtime", "Log", "Network"):
                        self.call(f"{domain}.enable", session=child)
                    self.call("Runtime.runIfWaitingForDebugger", session=child)

    def _wait_loaded_and_idle(self, start: int, quiet: float = 0.15) -> None:
        """Until the load event has fired and no request is in flight for ``quiet`` seconds."""
        deadline = time.monotonic() + self.timeout
        adopted: set[str] = set()
        while time.monotonic() < deadline:
            self._adopt_workers(start, adopted)
            mine = self._mine(start)
            loaded = any(e["method"] == "Page.loadEventFired" for e in mine)
            in_flight = set()
            for e in mine:
                rid = e.get("params", {}).get("requestId")
                if e["method"] == "Network.requestWillBeSent":
                    in_flight.add(rid)
                elif e["method"] in ("Network.loadingFinished", "Network.loadingFailed"):
                    in_flight.discard(rid)
            waited = self._next(time.monotonic() + quiet)
            if loaded and not in_flight and waited is None:
                return
        raise TimeoutError(f"page not loaded and idle within {self.timeout:.0f} s")

    def evaluate(self, expression: str):
        """The value of a JS expression in the page (promises awaited)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.call("Runtime.evaluate", params, session=self.session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate: {result['exceptionDetails']}")
        return result["result"].get("value")

    def load(self, url: str, collect_js: str) -> PageLoad:
        """Navigate to ``url``, wait for load and network idle, return ``collect_js``'s value."""
        start = len(self.events)
        self._sessions = {self.session}  # the previous page's workers are gone
        nav = self.call("Page.navigate", {"url": url}, session=self.session)
        if nav.get("errorText"):
            return PageLoad(url, {}, self.events[start:], nav["errorText"])
        self._wait_loaded_and_idle(start)
        dom = self.evaluate(collect_js)
        return PageLoad(url, dom, self._mine(start))

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole current page."""
        params = {"format": "png", "captureBeyondViewport": True}
        data = self.call("Page.captureScreenshot", params, session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._cmd_w)
        self._reader.join(timeout=5)
        os.close(self._evt_r)
