"""Expose: what the daemon shows and sends — the web tier, CSV exports, webhook deliveries."""
