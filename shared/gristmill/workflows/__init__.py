"""Workflows: several pipelines run in order to do what one pass cannot (e.g. dedup)."""

from gristmill.workflows.exact_dedup import ExactDeduplicationWorkflow

__all__ = ["ExactDeduplicationWorkflow"]
