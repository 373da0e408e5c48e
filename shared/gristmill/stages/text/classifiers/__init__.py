"""Text classifiers: a tokenizer stage and a model stage each, on CPU or a share of a GPU."""

from gristmill.stages.text.classifiers.base import ClassifierModelStage, DistributedDataClassifier
from gristmill.stages.text.classifiers.nemo import (
    DOMAIN_LABELS,
    QUALITY_LABELS,
    DomainClassifier,
    FineWebEduClassifier,
    FineWebModelStage,
    QualityClassifier,
)

__all__ = [
    "DOMAIN_LABELS",
    "QUALITY_LABELS",
    "ClassifierModelStage",
    "DistributedDataClassifier",
    "DomainClassifier",
    "FineWebEduClassifier",
    "FineWebModelStage",
    "QualityClassifier",
]
