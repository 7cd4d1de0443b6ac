"""Retrieval evaluation: Recall@K the way LightningDOT reports it, by exact search and through a built index.

``captions`` reads caption sets (Karpathy JSON, COCO captions, CSV/JSONL) and maps their image names to embedding
ids; ``embeddings`` reads the pipeline's Parquet tables; ``recall`` computes exact ranks; ``core.evaluate`` makes
the report; ``report`` prints it, writes JSON and plots it. The command is ``ldot eval`` (``jobs/evaluate.py``).
"""

from evaluation.captions import CaptionError, CaptionSet, load_captions
from evaluation.core import REFERENCE, EvaluationError, evaluate
from evaluation.embeddings import Embeddings, EmbeddingsError, read_embeddings
from evaluation.image_mapping import map_images
from evaluation.recall import image_to_text_ranks, text_to_image_ranks

__all__ = [
    "REFERENCE", "CaptionError", "CaptionSet", "Embeddings", "EmbeddingsError", "EvaluationError", "evaluate",
    "image_to_text_ranks", "load_captions", "map_images", "read_embeddings", "text_to_image_ranks",
]
