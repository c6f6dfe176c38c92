"""``[registry] url``, against a real HTTP server on 127.0.0.1: asked conditionally (a 304 costs nothing, the same
bytes are not applied again), an HTTP error, an answer that hangs, one too large, a redirect loop, a ``file://``
URL; the last good copy is kept and read back only when it is whole and of the same URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from driverlog_daemon.config import RegistryConfig
from driverlog_daemon.source.registry_source import CACHE, FetchError, RegistrySource, fetch
from driverlog_daemon.testing import DATA
from driverlog_daemon.testing.registry_server import RegistryServer, self_signed


@pytest.fixture
def served() -> Iterator[RegistryServer]:
    server = RegistryServer(DATA.read_bytes()).start()
    yield server
    server.stop()


def _source(server: RegistryServer, tmp: Path, **kw: float) -> tuple[RegistrySource, list[str]]:
    counted: list[str] = []
    config = RegistryConfig(url=server.url, **kw)  # type: ignore[arg-type]
    return RegistrySource(config, tmp, counted=counted.append), counted


def test_asked_again_it_costs_a_304_and_new_bytes_come_once(served: RegistryServer, tmp_path: Path) -> None:
    source, counted = _source(served, tmp_path)
    assert source.ask() == DATA.read_bytes()
    source.accepted(DATA.read_bytes())
    assert source.ask() is None  # If-None-Match matched
    assert served.answers() == ["200", "304"] and served.requests[1]["if_none_match"] == served.etag
    assert source.last_fetch is not None and source.last_fetch["ok"] and source.last_fetch["not_modified"]
    served.publish(DATA.read_bytes().replace(b"Acme Volume Driver (FC)", b"Acme Volume Driver (FC-NVMe)"))
    new = source.ask()
    assert new is not None and b"FC-NVMe" in new
    assert counted == ["new", "unchanged", "new"]
    # a restart: the copy kept, its validators too (asked conditionally at once)
    again, _ = _source(served, tmp_path)
    assert again.cached() == DATA.read_bytes()
    served.publish(DATA.read_bytes())
    assert again.ask() is None and served.answers()[-1] == "304"


def test_a_copy_of_another_url_or_torn_is_not_used(served: RegistryServer, tmp_path: Path) -> None:
    source, _ = _source(served, tmp_path)
    source.accepted(DATA.read_bytes())
    other = RegistrySource(RegistryConfig(url=served.url + "?other"), tmp_path)
    assert other.cached() is None
    (tmp_path / CACHE).write_bytes(b"{half")
    torn = RegistrySource(RegistryConfig(url=served.url), tmp_path)
    assert torn.cached() is None
    assert torn.ask() == DATA.read_bytes()  # its validators are not used without their copy: the answer is new
    assert served.requests[-1]["if_none_match"] == ""


def test_errors_say_what_and_are_counted(served: RegistryServer, tmp_path: Path) -> None:
    source, counted = _source(served, tmp_path, timeout_seconds=0.5)
    served.fault = "500"
    with pytest.raises(FetchError, match="HTTP 500"):
        source.ask()
    assert source.last_fetch is not None and not source.last_fetch["ok"]
    assert "HTTP 500" in source.last_fetch["error"]
    served.fault = "hang"
    with pytest.raises(FetchError, match=r"timed out|TimeoutError"):  # the server would answer after a minute
        source.ask()
    served.release.set()
    served.fault = "redirect-loop"
    with pytest.raises(FetchError, match="redirect"):
        source.ask()
    served.fault = None
    with pytest.raises(FetchError, match="larger than max_bytes"):
        fetch(served.url, max_bytes=100)
    assert counted == ["error", "error", "error"]
    with pytest.raises(FetchError, match=r"refused"):
        fetch("http://127.0.0.1:1/registry.json", timeout=2)


def test_a_file_url(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_bytes(DATA.read_bytes())
    assert fetch(path.as_uri()).data == DATA.read_bytes()
    with pytest.raises(FetchError, match="No such file"):
        fetch((tmp_path / "none.json").as_uri())


def test_tls_is_verified_and_never_left_for_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 served: RegistryServer) -> None:
    secure = RegistryServer(DATA.read_bytes(), tls=self_signed(tmp_path)).start()
    try:
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):  # not in the trust store
            fetch(secure.url, timeout=5)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))  # now it is
        assert fetch(secure.url, timeout=5).data == DATA.read_bytes()
        secure.fault, secure.redirect_to = "redirect", served.url  # https -> http
        with pytest.raises(FetchError, match=r"redirect from https to 'http://127\.0\.0\.1"):
            fetch(secure.url, timeout=5)
        assert served.requests == []  # the plain-http URL was never asked
    finally:
        secure.stop()


def test_keeping_the_copy_again_keeps_its_own_validators(served: RegistryServer, tmp_path: Path) -> None:
    # the start falls back on the copy kept when the source answers something else (an invalid registry): the copy
    # must not take that answer's validators, or the source would answer 304 to it from then on
    source, _ = _source(served, tmp_path)
    assert source.ask() == DATA.read_bytes()
    source.accepted(DATA.read_bytes())
    kept_etag = served.etag
    served.publish(b"{not a registry")
    assert source.ask() == b"{not a registry"
    source.accepted(DATA.read_bytes())  # the copy kept, applied again
    assert source.ask() == b"{not a registry"  # asked with the copy's validators: the new answer comes in full
    assert served.requests[-1]["if_none_match"] == kept_etag and served.answers()[-1] == "200"
