"""Expose: the read-only web side, in its own processes (``server.py``: a pre-fork gunicorn, ``tier.py``: the
daemon's supervisor of it).

``app.py`` is the WSGI application (routes, records rebuilt in the background, cache, headers), ``api.py``
DriverLog's API shapes, ``badge.py`` the badges, ``templates/`` the HTML, SVG and CSS. Its reads are
``driverlog_daemon.reads``, on read-only connections.
"""

from __future__ import annotations

from driverlog_daemon.web.app import App, Health, Live

__all__ = ["App", "Health", "Live"]
