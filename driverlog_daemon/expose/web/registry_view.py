"""``/registry`` and ``/api/1.0/registry``: the registry in force, the versions the file applied with what each
changed, and how the registry's source last answered (``last_fetch``, from the daemon's live state; null for a
registry read from a file)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from driverlog_daemon.expose.web import api
from driverlog_daemon.expose.web.responses import Response, json_response
from driverlog_daemon.store import reads, reads_registry

VERSIONS = 20  # versions shown by default; ?limit= up to MAX_VERSIONS
MAX_VERSIONS = 200


class RegistryView:
    def __init__(self, reader: reads.Reader, html: Callable[..., Response],
                 fetch: Callable[[], dict[str, Any] | None]) -> None:
        self.reader, self.html, self.fetch = reader, html, fetch

    def _data(self, query: Mapping[str, str]) -> dict[str, Any]:
        limit = api.int_param(query, "limit", VERSIONS, minimum=1, maximum=MAX_VERSIONS) or VERSIONS
        with self.reader.snapshot() as conn:
            current, versions, total = reads_registry.versions(conn, limit=limit)
        return {"current": current, "versions": versions, "total": total, "last_fetch": self.fetch()}

    def page(self, query: Mapping[str, str]) -> Response:
        return self.html("registry.html", registry_state=self._data(query))

    def api(self, query: Mapping[str, str]) -> Response:
        data = self._data(query)
        return json_response({"current": data["current"], "last_fetch": data["last_fetch"], "total": data["total"],
                              "versions": [{k: v for k, v in ver.items() if k != "lines"}
                                           for ver in data["versions"]]})
