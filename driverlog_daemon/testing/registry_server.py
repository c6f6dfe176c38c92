"""A registry served over real HTTP on 127.0.0.1, as a raw-file URL of DriverLog's repository would serve it
(``ETag``, ``Last-Modified``, 304 to a conditional request that still matches), with the faults a source has on
cue: an HTTP error, an answer that hangs, a redirect loop, a body that is not a registry."""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from pathlib import Path
from typing import Any

from driverlog_daemon.testing.http import ThreadedServer

StartResponse = Callable[..., Any]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key (PEM files in ``folder``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class RegistryServer:
    """``tls``: (certificate, key) to serve https with."""

    def __init__(self, document: bytes, tls: tuple[Path, Path] | None = None) -> None:
        self.document = document
        self.modified = time.time()
        self.fault: str | None = None  # "500", "hang", "redirect-loop"
        self.requests: list[dict[str, str]] = []  # each request's conditional headers, and what it was answered
        self.release = threading.Event()  # a hanging answer ends when set (or after a minute)
        self._web = ThreadedServer(self, "127.0.0.1", 0)
        self.scheme = "http"
        self.redirect_to: str | None = None  # fault "redirect": there
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._web.wrap(context)
            self.scheme = "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._web.port}/x/driverlog/raw/branch/master/etc/default_data.json"

    def publish(self, document: bytes) -> None:
        """A new registry at the same URL (a change merged upstream)."""
        self.document, self.modified = document, time.time() + 1

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.document).hexdigest()[:16] + '"'

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        seen = {"if_none_match": environ.get("HTTP_IF_NONE_MATCH", ""), "path": environ.get("PATH_INFO", "")}
        self.requests.append(seen)
        if self.fault == "500":
            seen["answer"] = "500"
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"oops\n"]
        if self.fault == "hang":
            seen["answer"] = "hang"
            self.release.wait(60)
            start_response("200 OK", [("Content-Type", "application/json")])
            return [self.document]
        if self.fault == "redirect":
            seen["answer"] = "302"
            start_response("302 Found", [("Location", self.redirect_to or ""), ("Content-Length", "0")])
            return [b""]
        if self.fault == "redirect-loop":
            seen["answer"] = "302"
            start_response("302 Found", [("Location", self.url + "?again"), ("Content-Length", "0")])
            return [b""]
        if seen["if_none_match"] == self.etag:
            seen["answer"] = "304"
            start_response("304 Not Modified", [("ETag", self.etag)])
            return [b""]
        seen["answer"] = "200"
        start_response("200 OK", [("Content-Type", "application/json"), ("ETag", self.etag),
                                  ("Last-Modified", formatdate(self.modified, usegmt=True)),
                                  ("Content-Length", str(len(self.document)))])
        return [self.document]

    def answers(self) -> list[str]:
        return [r.get("answer", "") for r in self.requests]

    def start(self) -> RegistryServer:
        self._web.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._web.stop()
