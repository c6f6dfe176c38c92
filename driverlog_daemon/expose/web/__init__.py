"""Expose: the read-only web side, in its own processes (``server.py``: a pre-fork gunicorn, ``tier.py``: the
daemon's supervisor of it).

``app.py`` is the WSGI application (routes, records rebuilt in the background, cache, headers), ``api.py``
DriverLog's API shapes, ``badge.py`` the badges, ``templates/`` the HTML, SVG and CSS. Its reads are
``driverlog_daemon.store.reads``, on read-only connections. Nothing is imported here: the daemon imports what it
needs of the web tier without loading Jinja2.
"""
