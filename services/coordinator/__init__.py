"""The coordinator service: job progress and completion from events, slot assignment."""
