"""A page opened in headless Chromium through the DevTools protocol, with no package beyond the standard library.

Chromium's `--remote-debugging-pipe` speaks the protocol over file descriptors 3 (commands in) and 4 (events and
answers out), each message JSON ended by a NUL byte. `open_page` loads a file and returns what a reviewer would
check by hand: console errors and uncaught exceptions, every request the page made, the DOM after its scripts ran,
a screenshot, and the answers to JavaScript expressions evaluated in the page.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    values: dict[str, object] = field(default_factory=dict)
    dom: str = ""
    screenshot: bytes = b""


class Pipe:
    """Send commands, read messages; events seen while waiting for an answer are kept in `events`."""

    def __init__(self, write_fd: int, read_fd: int):
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self.read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self.read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event


def open_page(chromium: str, path: Path, expressions: dict[str, str], width: int = 1280, height: int = 2400
              ) -> PageResult:
    """Load `path`, wait for its load event and a moment for late requests, evaluate `expressions`, screenshot."""
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def child_fds():
        """The protocol's fixed descriptors in the child. The pipe ends may themselves be 3 or 4: copied out of
        the way first, then placed and marked inheritable (os.pipe ends are not inherited, PEP 446)."""
        read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        pipe = Pipe(to_chrome_w, from_chrome_r)
        try:
            return drive(pipe, path, expressions, width, height)
        finally:
            try:
                pipe.send("Browser.close", timeout=5)
            except Exception:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_chrome_w)
            os.close(from_chrome_r)


def drive(pipe: Pipe, path: Path, expressions: dict[str, str], width: int, height: int) -> PageResult:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                     "mobile": False}, session=session)
    pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
    pipe.wait_for("Page.loadEventFired")
    time.sleep(0.5)  # anything the page would fetch after load
    result = PageResult()
    for name, expression in expressions.items():
        answer = pipe.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        if "exceptionDetails" in answer:
            result.console_errors.append(f"{name}: {answer['exceptionDetails'].get('text')}")
        result.values[name] = answer.get("result", {}).get("value")
    result.dom = pipe.send("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                                "returnByValue": True}, session=session)["result"]["value"]
    shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session)
    result.screenshot = base64.b64decode(shot["data"])
    collect_events(pipe.events, path, result)
    return result


def collect_events(events: list[dict], path: Path, result: PageResult) -> None:
    page_url = path.resolve().as_uri()
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            result.console_errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            result.console_errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if url != page_url and not url.startswith("data:"):
                result.requests.append(url)
