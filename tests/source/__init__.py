"""The source stage: SSH to Gerrit, the event stream, backfill queries and gaps, replay files."""
