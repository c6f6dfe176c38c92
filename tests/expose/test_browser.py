"""The status page in a real browser: headless Chromium renders it with no console error and no CSP violation, and
lays it out on a phone (400 px) as on a desktop, with nothing past the right edge and every table label shown."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from driverlog_daemon.registry.load import parse_registry
from driverlog_daemon.store.registry_apply import apply
from driverlog_daemon.testing import DATA, browser
from driverlog_daemon.testing.site import Site

pytestmark = pytest.mark.skipif(browser.CHROMIUM is None, reason=browser.MISSING)


@pytest.mark.timeout(120)
def test_page_renders_in_chromium_without_console_errors(site: Site, tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    url = f"http://127.0.0.1:{site.web.port}/"
    proc = browser.run(profile, "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count('<tr>') - dom.count('<thead><tr>') == len(site.registry.drivers)  # one row per driver
    assert "Acme Volume Driver (FC)" in dom and 'class="mark pass"' in dom
    assert browser.console_lines(proc) == []  # no script error, no Content-Security-Policy violation, no failed load

    driver = f"http://127.0.0.1:{site.web.port}/drivers/{site.driver_id('Acme Volume Driver (FC)')}"
    shot = tmp_path / "driver.png"
    proc = browser.run(profile, f"--screenshot={shot}", "--window-size=900,1200", driver)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000
    assert browser.console_lines(proc) == []
    dom = browser.run(profile, "--dump-dom", driver).stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script>" not in dom  # shown as text, not run


@pytest.mark.timeout(150)
def test_a_phone_gets_the_whole_page_with_its_labels_and_a_desktop_its_table(site: Site, tmp_path: Path) -> None:
    # the fixture's driver has a hostile evidence line and a long URL: the longest unbreakable things a page holds
    base = f"http://127.0.0.1:{site.web.port}"
    long_source = "https://opendev.org/x/driverlog/raw/branch/master/etc/" + "default_data" * 8 + ".json"
    for raw in (DATA.read_bytes(), DATA.read_bytes().replace(b"Acme Volume Driver (FC)", b"Acme Volume (FC-NVMe)")):
        apply(site.store, parse_registry(raw), raw, long_source, None, time.time())  # two versions for /registry
    with browser.Browser(tmp_path / "profile") as chromium:
        for path in ("/", f"/drivers/{site.driver_id('Acme Volume Driver (FC)')}", "/registry"):
            chromium.open(base + path, 400)
            phone = chromium.layout()
            assert phone["width"] == 400 and phone["overflowing"] == [], (path, phone)
            assert phone["scroll_width"] <= 400, (path, phone)
            assert phone["labelled"] > 0 and phone["labels_shown"] == phone["labelled"], (path, phone)  # no bare "83%"
            chromium.open(base + path, 1300)
            desktop = chromium.layout()
            assert desktop["overflowing"] == [] and desktop["labels_shown"] == 0, (path, desktop)  # a header row
