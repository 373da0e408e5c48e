"""What model stages are made of: finding a model's files, the back ends that run it, the
tokenizer stage, and the model stage base."""

from gristmill.stages.text.models.files import model_cache_dir, model_dir
from gristmill.stages.text.models.model import ModelStage, pad_batch
from gristmill.stages.text.models.tokenizer import INPUT_IDS, SEQ_ORDER, TokenizerStage

__all__ = [
    "INPUT_IDS",
    "SEQ_ORDER",
    "ModelStage",
    "TokenizerStage",
    "model_cache_dir",
    "model_dir",
    "pad_batch",
]
