"""Workflows: several pipelines run in order to do what one pass cannot (e.g. dedup)."""

from gristmill.workflows.exact_dedup import ExactDeduplicationWorkflow
from gristmill.workflows.fuzzy_dedup import FuzzyDeduplicationWorkflow

__all__ = ["ExactDeduplicationWorkflow", "FuzzyDeduplicationWorkflow"]
