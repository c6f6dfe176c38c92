"""Headless Chromium, as the tests and the docs' screenshots use it: a page's DOM, a screenshot, and a page laid
out at a given width (what reaches past the viewport, which table labels show).

A window is never narrower than 500 px, so a phone's width comes from DevTools' device emulation, spoken over
``--remote-debugging-pipe`` (JSON messages ended by a NUL on file descriptors 3 and 4: no websocket, no package).
The page is the real one, from the real server, under its own Content-Security-Policy; DevTools' evaluation is
not a page script, so the policy does not stop the measurement.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
MISSING = "chromium is not installed (Debian package chromium; .ci/run installs it)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]

# Every element whose box reaches past the viewport's right edge (beyond a rounding pixel), and every labelled table
# cell whose label the stylesheet shows.
PROBE = """(() => {
  const width = document.documentElement.clientWidth, over = [];
  for (const el of document.body.querySelectorAll('*')) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 1) over.push(`${el.tagName.toLowerCase()}.${el.className}`);
  }
  const labelled = [...document.querySelectorAll('td[data-label]')];
  const shown = labelled.filter(td => getComputedStyle(td, '::before').content.includes(td.dataset.label));
  return {width, scroll_width: document.documentElement.scrollWidth, overflowing: over.slice(0, 20),
          labelled: labelled.length, labels_shown: shown.length};
})()"""


def run(profile: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Chromium with the tests' flags; raises when it is not installed (callers skip on ``CHROMIUM is None``)."""
    if CHROMIUM is None:
        raise RuntimeError(MISSING)
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def console_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """What the page wrote to the console (script errors, CSP violations, failed loads)."""
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


class Browser:
    """One headless Chromium driven over DevTools' pipe: ``open`` a URL at a width, ``layout`` it, ``screenshot``."""

    def __init__(self, profile: Path, timeout: float = 60) -> None:
        if CHROMIUM is None:
            raise RuntimeError(MISSING)
        self.timeout = timeout
        to_chromium, self._commands = os.pipe()
        self._answers, from_chromium = os.pipe()
        # bash (dash takes one-digit descriptors only) hands our pipe ends over as 3 and 4, where the pipe is expected
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_chromium} 4>&{from_chromium}', CHROMIUM, *FLAGS,
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(to_chromium, from_chromium), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._next = 0
        self._events: list[dict[str, Any]] = []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")

    def close(self) -> None:
        os.close(self._commands)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._answers)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, url: str, width: int, height: int = 900) -> None:
        """Load ``url`` in a viewport ``width`` × ``height`` CSS pixels (a phone's, touch and all, below 700)."""
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700})
        if "#" in url:  # the same page again with a fragment would only scroll: no load event to wait for
            self._events.clear()
            self.call("Page.navigate", {"url": "about:blank"})
            self._event("Page.loadEventFired")
        self._events.clear()
        self.call("Page.navigate", {"url": url})
        self._event("Page.loadEventFired")

    def layout(self) -> dict[str, Any]:
        """``width``, ``scroll_width``, ``overflowing`` (elements past the right edge), ``labelled`` and
        ``labels_shown`` (table cells with a ``data-label``, and those showing it)."""
        answer = self.call("Runtime.evaluate", {"expression": PROBE, "returnByValue": True})
        value: dict[str, Any] = answer["result"]["value"]
        return value

    def screenshot(self, out: Path, *, whole_page: bool = False) -> None:
        """The viewport, or the whole page, as PNG."""
        params: dict[str, Any] = {"format": "png"}
        if whole_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"],
                                                            "height": size["height"], "scale": 1})
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params)["data"]))

    # ------------------------------------------------------------------------------------------ the pipe

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call(method, params, self._session)

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None
              ) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self._events.append(reply)

    def _event(self, method: str) -> dict[str, Any]:
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method:
                    return self._events.pop(i)
            self._events.append(self._read())

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise TimeoutError("chromium did not answer over its DevTools pipe")
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        reply: dict[str, Any] = json.loads(message)
        return reply
