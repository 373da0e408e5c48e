"""Text curation stages: io (readers, writers, ids), filters, modifiers, presets."""
