"""Store: the one writer thread, the database's schema, the writes and every read."""
