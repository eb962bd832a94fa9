"""Load an HTML file in headless Chromium and measure it, over the DevTools protocol on a
pipe (`--remote-debugging-pipe`): no websocket client, no Playwright, only the system
browser (Debian's `chromium`) and the standard library.

    probe = load_page(find_chromium(), Path("report.html"), width=1280, height=800)
    probe.errors, probe.result["images"], probe.screenshot  # console errors, probe JSON, PNG bytes
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs in the page after load: waits for every image to decode, then reports sizes and
# layout figures the tests check.
PROBE_JS = """
(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const box = el => el ? el.getBoundingClientRect() : null;
  const sc = document.getElementById('scorecard') || document.querySelector('.note');
  const tables = [...document.querySelectorAll('table')].map(t => {
    const r = t.getBoundingClientRect();
    return {head: (t.rows[0] ? t.rows[0].innerText : '').slice(0, 120), right: r.right, width: r.width, scrollWidth: t.scrollWidth,
            wrapper: t.parentElement ? t.parentElement.clientWidth : null};
  });
  return {
    images: imgs.map(i => ({alt: i.alt, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight})),
    scorecardBottom: sc ? box(sc).bottom : null,
    overallBottom: document.getElementById('overall') ? box(document.getElementById('overall')).bottom : null,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    tables: tables,
    title: document.title,
  };
})()
"""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageProbe:
    result: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""


class _Pipe:
    """DevTools protocol over two pipes: messages are JSON terminated by NUL."""

    def __init__(self, exe: str, profile: str) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def child_fds() -> None:  # the browser reads commands on fd 3 and writes on fd 4
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [exe, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--mute-audio",
                "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=child_fds, pass_fds=(3, 4))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._next(timeout)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._next(timeout)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def _next(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _error_text(e: dict[str, Any]) -> str | None:
    m, p = e.get("method"), e.get("params", {})
    if m == "Runtime.exceptionThrown":
        return "exception: " + str(p.get("exceptionDetails", {}).get("text"))
    if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        return "console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
    if m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
        return "log: " + str(p["entry"].get("text")) + " " + str(p["entry"].get("url", ""))
    return None


def load_page(exe: str, path: Path, width: int = 1280, height: int = 800,
              full_page: bool = False) -> PageProbe:
    """Open `path` in a width x height viewport; return the probe's JSON, the console
    errors and a PNG screenshot (the viewport, or the whole page with `full_page`)."""
    with tempfile.TemporaryDirectory(prefix="bastion-chromium-") as profile:
        pipe = _Pipe(exe, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            sid = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for method in ("Runtime.enable", "Log.enable", "Page.enable"):
                pipe.send(method, session=sid)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, sid)
            pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, sid)
            pipe.wait_event("Page.loadEventFired")
            res = pipe.send("Runtime.evaluate", {"expression": PROBE_JS, "awaitPromise": True,
                                                 "returnByValue": True}, sid)
            if "exceptionDetails" in res:
                raise RuntimeError(f"probe failed: {res['exceptionDetails']}")
            shot_args: dict[str, Any] = {"format": "png"}
            if full_page:
                h = pipe.send("Runtime.evaluate", {"expression": "document.documentElement.scrollHeight",
                                                   "returnByValue": True}, sid)["result"]["value"]
                shot_args.update(captureBeyondViewport=True,
                                 clip={"x": 0, "y": 0, "width": width, "height": h, "scale": 1})
            shot = base64.b64decode(pipe.send("Page.captureScreenshot", shot_args, sid)["data"])
            errors = [t for t in (_error_text(e) for e in pipe.events) if t]
            return PageProbe(res["result"]["value"], errors, shot)
        finally:
            pipe.close()
