"""NeMo Curator's text classifiers, with their labels, thresholds and defaults, from a local
model (`model_path`): nothing is downloaded at run time.

The checkpoints they were trained as are `nvidia/quality-classifier-deberta`,
`nvidia/domain-classifier` (DeBERTa-v3-base) and `HuggingFaceFW/fineweb-edu-classifier`
(a BERT-like regressor). Export one to ONNX once (see docs/models.md) or, with the `torch`
extra, point `model_path` at a transformers checkpoint directory.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gristmill.errors import ModelError
from gristmill.stages.text.classifiers.base import DistributedDataClassifier
from gristmill.stages.text.models.backends import Backend
from gristmill.stages.text.models.model import ModelStage
from gristmill.stages.text.models.tokenizer import PaddingSide

__all__ = [
    "DOMAIN_LABELS",
    "QUALITY_LABELS",
    "DomainClassifier",
    "FineWebEduClassifier",
    "FineWebModelStage",
    "QualityClassifier",
]

# id2label of nvidia/quality-classifier-deberta.
QUALITY_LABELS = ["High", "Medium", "Low"]
# id2label of nvidia/domain-classifier (26 domains).
DOMAIN_LABELS = [
    "Adult",
    "Arts_and_Entertainment",
    "Autos_and_Vehicles",
    "Beauty_and_Fitness",
    "Books_and_Literature",
    "Business_and_Industrial",
    "Computers_and_Electronics",
    "Finance",
    "Food_and_Drink",
    "Games",
    "Health",
    "Hobbies_and_Leisure",
    "Home_and_Garden",
    "Internet_and_Telecom",
    "Jobs_and_Education",
    "Law_and_Government",
    "News",
    "Online_Communities",
    "People_and_Society",
    "Pets_and_Animals",
    "Real_Estate",
    "Science",
    "Sensitive_Subjects",
    "Shopping",
    "Sports",
    "Travel_and_Transportation",
]
# FineWeb-Edu's educational score is 0..5; NeMo Curator labels 2.5 and above high quality.
FINEWEB_EDU_THRESHOLD = 2.5
FINEWEB_EDU_LABELS = ["high_quality", "low_quality"]


class QualityClassifier(DistributedDataClassifier):
    """High / Medium / Low quality (NeMo Curator's defaults: `quality_pred`, 6000 characters,
    1024 tokens)."""

    default_labels = QUALITY_LABELS

    def __init__(
        self,
        model_path: str,
        pred_column: str = "quality_pred",
        prob_column: str | None = None,
        text_field: str = "text",
        filter_by: list[str] | None = None,
        max_chars: int = 6000,
        sort_by_length: bool = True,
        model_inference_batch_size: int = 256,
        autocast: bool = True,
        backend: Backend = "auto",
        gpus: float = 0.0,
        id_field: str = "id",
    ):
        super().__init__(
            model_path,
            pred_column=pred_column,
            prob_column=prob_column,
            text_field=text_field,
            filter_by=filter_by,
            max_chars=max_chars,
            max_seq_length=1024,
            sort_by_length=sort_by_length,
            model_inference_batch_size=model_inference_batch_size,
            autocast=autocast,
            backend=backend,
            gpus=gpus,
            id_field=id_field,
        )


class DomainClassifier(DistributedDataClassifier):
    """One of 26 domains (NeMo Curator's defaults: `domain_pred`, 2000 characters, 512
    tokens)."""

    default_labels = DOMAIN_LABELS

    def __init__(
        self,
        model_path: str,
        pred_column: str = "domain_pred",
        prob_column: str | None = None,
        text_field: str = "text",
        filter_by: list[str] | None = None,
        max_chars: int = 2000,
        sort_by_length: bool = True,
        model_inference_batch_size: int = 256,
        autocast: bool = True,
        backend: Backend = "auto",
        gpus: float = 0.0,
        id_field: str = "id",
    ):
        super().__init__(
            model_path,
            pred_column=pred_column,
            prob_column=prob_column,
            text_field=text_field,
            filter_by=filter_by,
            max_chars=max_chars,
            max_seq_length=512,
            sort_by_length=sort_by_length,
            model_inference_batch_size=model_inference_batch_size,
            autocast=autocast,
            backend=backend,
            gpus=gpus,
            id_field=id_field,
        )


class FineWebModelStage(ModelStage):
    """The FineWeb-Edu regressor's outputs as NeMo Curator writes them: the score clipped to
    [0, 5] (float32), rounded (int, half to even), and `high_quality` / `low_quality` at 2.5."""

    def __init__(
        self,
        model_path: str,
        pred_column: str = "fineweb-edu-score-label",
        float_score_column: str = "fineweb-edu-score-float",
        int_score_column: str = "fineweb-edu-score-int",
        model_inference_batch_size: int = 256,
        has_seq_order: bool = True,
        padding_side: PaddingSide = "right",
        backend: Backend = "auto",
        gpus: float = 0.0,
        autocast: bool = True,
    ):
        self.pred_column = pred_column
        self.float_score_column = float_score_column
        self.int_score_column = int_score_column
        super().__init__(
            model_path,
            model_inference_batch_size,
            has_seq_order,
            padding_side,
            backend,
            gpus,
            autocast,
        )

    def outputs(self) -> tuple[list[str], list[str]]:
        """The label and the two scores."""
        return [], [self.pred_column, self.float_score_column, self.int_score_column]

    def column_types(self) -> dict[str, pa.DataType]:
        """The label and the two scores' types."""
        return {
            self.pred_column: pa.string(),
            self.float_score_column: pa.float32(),
            self.int_score_column: pa.int64(),
        }

    def output_columns(self, outputs: np.ndarray, lengths: np.ndarray) -> dict[str, pa.Array]:
        """Label, float score and int score of each row."""
        if outputs.ndim == 2 and outputs.shape[1] == 1:
            outputs = outputs[:, 0]
        if outputs.ndim != 1:
            raise ModelError(
                f"stage '{self.name}': a FineWeb-Edu model gives one score per row, this one "
                f"gives {list(outputs.shape)[1:]}"
            )
        clipped = np.clip(outputs, 0.0, 5.0).astype(np.float32)
        labels = np.where(outputs >= FINEWEB_EDU_THRESHOLD, "high_quality", "low_quality")
        return {
            self.pred_column: pa.array(labels.tolist(), pa.string()),
            self.float_score_column: pa.array(clipped),
            self.int_score_column: pa.array(np.rint(clipped).astype(np.int64)),
        }


class FineWebEduClassifier(DistributedDataClassifier):
    """FineWeb-Edu's educational value, 0 to 5 (NeMo Curator's columns and 512 tokens);
    `filter_by` takes `high_quality` / `low_quality`."""

    default_labels = FINEWEB_EDU_LABELS

    def __init__(
        self,
        model_path: str,
        pred_column: str = "fineweb-edu-score-label",
        float_score_column: str = "fineweb-edu-score-float",
        int_score_column: str = "fineweb-edu-score-int",
        text_field: str = "text",
        filter_by: list[str] | None = None,
        max_chars: int | None = None,
        sort_by_length: bool = True,
        model_inference_batch_size: int = 256,
        autocast: bool = True,
        backend: Backend = "auto",
        gpus: float = 0.0,
        id_field: str = "id",
    ):
        self.float_score_column = float_score_column
        self.int_score_column = int_score_column
        super().__init__(
            model_path,
            pred_column=pred_column,
            text_field=text_field,
            filter_by=filter_by,
            max_chars=max_chars,
            max_seq_length=512,
            sort_by_length=sort_by_length,
            model_inference_batch_size=model_inference_batch_size,
            autocast=autocast,
            backend=backend,
            gpus=gpus,
            id_field=id_field,
        )

    def model_stage(self) -> ModelStage:
        """The regressor's stage."""
        return FineWebModelStage(
            self.model_path,
            pred_column=self.pred_column,
            float_score_column=self.float_score_column,
            int_score_column=self.int_score_column,
            model_inference_batch_size=self.model_inference_batch_size,
            has_seq_order=self.sort_by_length,
            padding_side=self.padding_side,
            backend=self.backend,
            gpus=self.gpus,
            autocast=self.autocast,
        )
