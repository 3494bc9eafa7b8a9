"""Durable state: the journal and snapshots (the only code that writes to disk)."""
