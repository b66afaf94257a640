"""Retrieval evaluation: exact Recall@k and mAP over query and gallery embeddings.

See :func:`retrieval_metrics` and ``docs/evaluation.md``.
"""

from __future__ import annotations

from shitu_features.evaluation.metrics import l2_normalize, mean_average_precision, recall_at_k, retrieval_metrics

__all__ = ["retrieval_metrics", "recall_at_k", "mean_average_precision", "l2_normalize"]
