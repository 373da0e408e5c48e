"""Deduplication stages; the workflows that drive them are in `gristmill.workflows`."""
