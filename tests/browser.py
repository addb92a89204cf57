"""A small test helper that drives a real headless Chromium over the DevTools protocol.

No dependencies beyond the standard library: Chromium is started with ``--remote-debugging-pipe``,
so it reads NUL-terminated JSON commands on its file descriptor 3 and writes NUL-terminated JSON
responses and events on its file descriptor 4. Tests use it to render a self-contained HTML report
and check it as a person would see it::

    with Browser() as browser:
        page = browser.open(tmp_path / "report.html")
        assert page.console_errors == []
        assert page.evaluate("document.querySelectorAll('tr').length") == 4
        page.screenshot(tmp_path / "report.png")

What Chromium reports, as seen on Chromium 150 (Debian):

- ``console.error(...)`` and a failed ``console.assert(...)``: ``Runtime.consoleAPICalled`` with type
  ``error`` / ``assert``; recorded as ``"console.error: <args>"`` / ``"console.assert: <args>"``.
- An uncaught exception in a page script: ``Runtime.exceptionThrown``; recorded as
  ``"exception: <description with stack>"``, e.g. ``"exception: Error: boom\\n    at file:///..."``.
- A resource that fails to load (a missing ``<img src>`` on a file:// page): ``Log.entryAdded``
  with level ``error``, source ``network``; recorded as
  ``"network: Failed to load resource: net::ERR_FILE_NOT_FOUND (file:///.../missing.png)"``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

__all__ = ["Browser", "BrowserError", "JavaScriptError", "Page", "find_chromium"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable to use: $SCIFFUSION_CHROMIUM if set, else the first of chromium,
    chromium-browser, google-chrome, google-chrome-stable on PATH; None when there is none."""
    env = os.environ.get("SCIFFUSION_CHROMIUM")
    if env:
        found = shutil.which(env)
        return found if found else (env if os.path.isfile(env) and os.access(env, os.X_OK) else None)
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    """Chromium died, timed out, or answered a command with an error."""


class JavaScriptError(BrowserError):
    """A script run by Page.evaluate threw; the message is the exception's text."""


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate of fd numbered 10 or above (so it can never collide with 3 or 4
    in the child), closing the original."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Browser:
    """A headless Chromium process spoken to over ``--remote-debugging-pipe``.

    ``Browser(executable=None, *, timeout=30.0, args=())``: executable defaults to find_chromium();
    timeout is the default for each command; args are extra command-line switches. Use it as a
    context manager (or call close()); it launches on __enter__ / start()."""

    def __init__(self, executable: str | None = None, *, timeout: float = 30.0, args: tuple[str, ...] | list[str] = ()):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("Chromium not found: apt-get install chromium, or set SCIFFUSION_CHROMIUM")
        self.timeout = timeout
        self.extra_args = list(args)
        self.proc: subprocess.Popen | None = None
        self._tmp: str | None = None
        self._stderr_path: str | None = None
        self._write_fd: int | None = None
        self._read_fd: int | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self._pages: dict[str, Page] = {}
        self.events: deque[dict] = deque(maxlen=1000)  # browser-level events (no sessionId)
        self._eof = False
        self._reader_error: BaseException | None = None
        self._closed = False

    # -- process ---------------------------------------------------------------------------

    def start(self) -> "Browser":
        if self.proc is not None:
            return self
        self._tmp = tempfile.mkdtemp(prefix="sciffusion-chromium-")
        profile = os.path.join(self._tmp, "profile")
        os.mkdir(profile)
        self._stderr_path = os.path.join(self._tmp, "stderr.log")
        argv = [
            self.executable,
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--password-store=basic",
            "--use-mock-keychain",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.insert(2, "--no-sandbox")
        argv += self.extra_args
        argv.append("about:blank")

        # to_child: we write, Chromium reads it as fd 3. from_child: Chromium writes it as fd 4.
        child_in, parent_out = (_high_fd(fd) for fd in os.pipe())
        parent_in, child_out = (_high_fd(fd) for fd in os.pipe())

        def setup_child_fds() -> None:  # runs in the child between fork and exec
            os.dup2(child_in, 3)  # dup2 onto a different number clears close-on-exec
            os.dup2(child_out, 4)

        stderr = open(self._stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                close_fds=False,  # our descriptors are close-on-exec already; 3 and 4 must survive
                preexec_fn=setup_child_fds,
                start_new_session=True,  # its own process group, so leftover helpers can be reaped
            )
        except BaseException:
            for fd in (child_in, parent_out, parent_in, child_out):
                os.close(fd)
            self._cleanup_tmp()
            raise
        finally:
            stderr.close()
            # The parent must not keep the child's ends open, or it would never see EOF.
        os.close(child_in)
        os.close(child_out)
        self._write_fd, self._read_fd = parent_out, parent_in
        self._reader = threading.Thread(target=self._read_loop, name="chromium-cdp-reader", daemon=True)
        self._reader.start()
        try:
            self.version = self.send("Browser.getVersion", timeout=self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._eof

    def stderr_tail(self, lines: int = 25) -> str:
        """The last lines Chromium wrote on stdout/stderr."""
        if not self._stderr_path:
            return ""
        try:
            with open(self._stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        # Chromium in a container logs a stream of harmless D-Bus connection errors; drop them
        kept = [line for line in text.splitlines() if "ERROR:dbus/" not in line]
        return "\n".join(kept[-lines:])

    def _failure(self, what: str) -> BrowserError:
        code = self.proc.poll() if self.proc else None
        state = f"Chromium exited with code {code}" if code is not None else (
            "Chromium closed its DevTools pipe" if self._eof else "Chromium is still running")
        tail = self.stderr_tail()
        return BrowserError(f"{what} ({state}; executable {self.executable})"
                            + (f"\n--- Chromium output (tail) ---\n{tail}" if tail else ""))

    def close(self) -> None:
        """Close all pages and the browser: Browser.close, then SIGTERM, then SIGKILL; remove the
        temporary profile. Safe to call twice and after Chromium died."""
        if self._closed:
            return
        self._closed = True
        proc = self.proc
        if proc is not None:
            answered = False
            if self.alive:
                try:
                    self.send("Browser.close", timeout=2)
                    answered = True
                except BrowserError:
                    pass
            try:  # a browser that acknowledged Browser.close gets a while to exit by itself
                proc.wait(timeout=5 if answered else 0.5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            try:  # helpers (zygote, renderers) left behind in the session we created for it
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
        for name in ("_write_fd",):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._read_fd is not None and (self._reader is None or not self._reader.is_alive()):
            os.close(self._read_fd)
            self._read_fd = None
        with self._cond:
            self._eof = True
            self._cond.notify_all()
        self._cleanup_tmp()

    def _cleanup_tmp(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._stderr_path = None

    # -- protocol --------------------------------------------------------------------------

    def _read_loop(self) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = os.read(self._read_fd, 1 << 20)
                if not chunk:
                    break
                start = len(buf)
                buf += chunk
                pos = buf.find(b"\0", start)
                while pos >= 0:
                    raw = bytes(buf[:pos])
                    del buf[: pos + 1]
                    if raw:
                        self._dispatch(json.loads(raw))
                    pos = buf.find(b"\0")
        except BaseException as e:  # a broken message or a closed fd: report it, don't hang
            self._reader_error = e
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _dispatch(self, msg: dict) -> None:
        with self._cond:
            if "id" in msg:
                self._responses[msg["id"]] = msg
            else:
                session = msg.get("sessionId")
                page = self._pages.get(session) if session else None
                if page is not None:
                    page._on_event(msg)
                elif not session:
                    self.events.append(msg)
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, *, session_id: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one command and wait for its response; returns its "result". Raises BrowserError
        when Chromium answers with an error, dies, or does not answer within timeout seconds."""
        timeout = self.timeout if timeout is None else timeout
        if self.proc is None:
            raise BrowserError(f"{method}: the browser was not started")
        with self._cond:
            if self._eof or self.proc.poll() is not None:
                raise self._failure(f"{method}: cannot send, the browser is gone")
            self._next_id += 1
            msg_id = self._next_id
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        data = json.dumps(msg).encode() + b"\0"
        try:
            with self._write_lock:
                view = memoryview(data)
                while view:
                    n = os.write(self._write_fd, view)
                    view = view[n:]
        except (OSError, TypeError) as e:
            raise self._failure(f"{method}: writing to Chromium failed: {e}") from None
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._responses:
                if self._eof:
                    raise self._failure(f"{method}: Chromium went away before answering")
                if self.proc.poll() is not None:
                    # the pipe may stay open for a moment in a helper; the main process is gone
                    raise self._failure(f"{method}: Chromium went away before answering")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._failure(f"{method}: no answer from Chromium within {timeout:g} s")
                self._cond.wait(min(left, 0.2))
            response = self._responses.pop(msg_id)
        if "error" in response:
            err = response["error"]
            raise BrowserError(f"{method} failed: {err.get('message')} (code {err.get('code')})"
                               + (f": {err['data']}" if err.get("data") else ""))
        return response.get("result", {})

    def _wait_for(self, predicate: Callable[[], bool], deadline: float, what: str) -> bool:
        """Wait (under the condition) until predicate() is true; raise BrowserError if Chromium
        dies; return False at the deadline."""
        with self._cond:
            while not predicate():
                if self._eof or (self.proc is not None and self.proc.poll() is not None):
                    raise self._failure(f"{what}: Chromium went away")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    # -- pages -----------------------------------------------------------------------------

    def open(self, url_or_path: str | os.PathLike, width: int = 1280, height: int = 900,
             timeout: float = 30) -> "Page":
        """Open a URL (or a local file path) in a new tab of the given viewport size, wait for its
        load event and then for the network to go idle (bounded), and return the Page."""
        url = _to_url(url_or_path)
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        target_id = self.send("Target.createTarget", {"url": "about:blank"},
                              timeout=left())["targetId"]
        try:
            session_id = self.send("Target.attachToTarget", {"targetId": target_id, "flatten": True},
                                   timeout=left())["sessionId"]
        except BaseException:
            self._close_target(target_id)
            raise
        page = Page(self, target_id, session_id, width, height)
        with self._cond:
            self._pages[session_id] = page
        try:
            for method in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
                page.send(method, timeout=left())
            page.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, timeout=left())
            page._navigate(url, deadline)
        except BaseException:
            page.close()
            raise
        return page

    def _close_target(self, target_id: str) -> None:
        if self.alive:
            try:
                self.send("Target.closeTarget", {"targetId": target_id}, timeout=5)
            except BrowserError:
                pass


def _to_url(url_or_path: str | os.PathLike) -> str:
    if isinstance(url_or_path, os.PathLike):
        path = Path(url_or_path)
    else:
        text = str(url_or_path)
        if "://" in text or text.startswith(("about:", "data:", "blob:", "javascript:")):
            return text
        path = Path(text)
    path = path.expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"no such file to open in Chromium: {path}")
    return path.as_uri()


def _remote_to_text(obj: dict) -> str:
    """One console.* argument (a RemoteObject) as a person would read it in the console."""
    if "value" in obj:
        value = obj["value"]
        return value if isinstance(value, str) else json.dumps(value)
    if "unserializableValue" in obj:
        return obj["unserializableValue"]
    if obj.get("type") == "undefined":
        return "undefined"
    return obj.get("description") or obj.get("className") or obj.get("type", "?")


class Page:
    """One tab, attached through a flat session. Made by Browser.open()."""

    #: how long the network must stay quiet to count as idle, and the most open() waits for it
    IDLE_QUIET_S = 0.1
    IDLE_MAX_S = 3.0

    def __init__(self, browser: Browser, target_id: str, session_id: str, width: int, height: int):
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.width = width
        self.height = height
        self.url: str | None = None
        self.console_errors: list[str] = []  #: errors as strings; see the module docstring
        self.console_messages: list[str] = []  #: every console.* call, "type: text"
        self.events: deque[dict] = deque(maxlen=2000)  #: raw events of this session, newest last
        self._loads = 0  # Page.loadEventFired seen so far
        self._inflight: set[str] = set()
        self._last_network = time.monotonic()
        self._closed = False

    # called by the browser's reader thread, under its condition lock
    def _on_event(self, msg: dict) -> None:
        self.events.append(msg)
        method = msg.get("method", "")
        params = msg.get("params", {})
        if method == "Page.loadEventFired":
            self._loads += 1
        elif method == "Runtime.consoleAPICalled":
            kind = params.get("type", "log")
            text = " ".join(_remote_to_text(a) for a in params.get("args", []))
            self.console_messages.append(f"{kind}: {text}")
            if kind in ("error", "assert"):
                self.console_errors.append(f"console.{kind}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception") or {}
            text = exc.get("description") or details.get("text") or "exception"
            self.console_errors.append(f"exception: {text}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                text = entry.get("text", "")
                if entry.get("url") and entry["url"] not in text:
                    text += f" ({entry['url']})"
                self.console_errors.append(f"{entry.get('source', 'log')}: {text}")
        elif method == "Network.requestWillBeSent":
            self._inflight.add(params.get("requestId"))
            self._last_network = time.monotonic()
        elif method in ("Network.loadingFinished", "Network.loadingFailed"):
            self._inflight.discard(params.get("requestId"))
            self._last_network = time.monotonic()
        elif method == "Inspector.detached" or method == "Inspector.targetCrashed":
            self.console_errors.append(f"{method}: {params.get('reason', 'the page went away')}")

    def send(self, method: str, params: dict | None = None, *, timeout: float | None = None) -> dict:
        """A DevTools command in this page's session; returns its result."""
        return self.browser.send(method, params, session_id=self.session_id, timeout=timeout)

    def _navigate(self, url: str, deadline: float) -> None:
        with self.browser._cond:
            mark = self._loads
        result = self.send("Page.navigate", {"url": url}, timeout=max(0.1, deadline - time.monotonic()))
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url} failed: {result['errorText']}")
        self.url = url

        def loaded() -> bool:
            return self._loads > mark

        if not self.browser._wait_for(loaded, deadline, f"loading {url}"):
            raise self.browser._failure(f"loading {url}: no load event within the timeout")

        def idle() -> bool:
            return not self._inflight and time.monotonic() - self._last_network >= self.IDLE_QUIET_S

        self.browser._wait_for(idle, min(deadline, time.monotonic() + self.IDLE_MAX_S), f"loading {url}")
        # two animation frames, so that what scripts drew on load is on screen
        try:
            self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
                          timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        except JavaScriptError:
            pass

    def evaluate(self, expression: str, *, timeout: float | None = None) -> Any:
        """Run a JavaScript expression in the page and return its value as JSON (a promise is
        awaited; undefined is None). Raises JavaScriptError with the exception's text if it throws."""
        result = self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True, "userGesture": True,
        }, timeout=timeout)
        details = result.get("exceptionDetails")
        if details:
            exc = details.get("exception") or {}
            text = exc.get("description") or exc.get("value") or details.get("text") or "exception"
            raise JavaScriptError(f"evaluating {expression[:200]!r} threw: {text}")
        obj = result.get("result", {})
        if "value" in obj:
            return obj["value"]
        if "unserializableValue" in obj:
            u = obj["unserializableValue"]
            try:
                return float(u)
            except ValueError:
                return int(u.rstrip("n")) if u.endswith("n") else u
        return None

    def screenshot(self, path: str | os.PathLike, *, full_page: bool = True, timeout: float | None = None) -> Path:
        """Write a PNG of the page to path and return it. full_page: the whole document (at least
        the viewport); otherwise just the viewport (width x height)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.send("Page.getLayoutMetrics", timeout=timeout)
            size = metrics.get("cssContentSize") or metrics.get("contentSize")
            w = max(self.width, int(-(-size["width"] // 1)))
            h = max(self.height, int(-(-size["height"] // 1)))
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", params, timeout=timeout)["data"])
        path = Path(path)
        path.write_bytes(data)
        return path

    def close(self) -> None:
        """Close the tab (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.browser._close_target(self.target_id)
        with self.browser._cond:
            self.browser._pages.pop(self.session_id, None)

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
