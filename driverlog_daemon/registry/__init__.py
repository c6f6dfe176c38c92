"""The driver registry: DriverLog's ``default_data.json`` loaded and checked (``load``), its 2014 form read as today's
(``legacy``), and what a change of it means for history (``changes``)."""
