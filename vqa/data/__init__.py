"""Datasets: reading qa.jsonl (`records`), the decoded-feature cache (`cache`), training samples and
batches (`samples`)."""
from .cache import FeatureCache, load_features, usable
from .records import QA_FILE, read_jsonl, read_qa, split_holdout
from .samples import EpochOrder, PromptEncoder, Sample, qa_samples, rank_share

__all__ = [
    "QA_FILE", "EpochOrder", "FeatureCache", "PromptEncoder", "Sample", "load_features", "qa_samples",
    "rank_share", "read_jsonl", "read_qa", "split_holdout", "usable",
]
