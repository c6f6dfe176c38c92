"""Parse: lines of ``gerrit stream-events`` (or query rows) -> typed events and change facts."""
