"""The status page in a real browser: headless Chromium renders it with no console error and no CSP violation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from driverlog_daemon.testing.site import Site

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package chromium; .ci/run installs it)")
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.timeout(120)
def test_page_renders_in_chromium_without_console_errors(site: Site, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{site.web.port}/"
    proc = chromium(tmp_path, "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count('<tr>') - dom.count('<thead><tr>') == len(site.registry.drivers)  # one row per driver
    assert "Acme Volume Driver (FC)" in dom and 'class="mark pass"' in dom
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no script error, no Content-Security-Policy violation, no failed load

    driver = f"http://127.0.0.1:{site.web.port}/drivers/{site.driver_id('Acme Volume Driver (FC)')}"
    shot = tmp_path / "driver.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", "--window-size=900,1200", driver)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000
    assert [line for line in proc.stderr.splitlines() if ":CONSOLE" in line] == []
    dom = chromium(tmp_path, "--dump-dom", driver).stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script>" not in dom  # shown as text, not run
