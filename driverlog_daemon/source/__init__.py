"""Source: where events come from — the live SSH stream, backfill and history queries, a replay file."""
