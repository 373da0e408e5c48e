"""Deduplication."""
