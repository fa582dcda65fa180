"""GRPO-family building blocks, each a small pure function registered by name (see ``registry.Registry``)."""
from mmrl.algorithms import advantages, aggregation, kl, losses  # noqa: F401  (registers the functions)
from mmrl.algorithms.registry import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES

__all__ = ["ADVANTAGES", "AGGREGATIONS", "KL_ESTIMATORS", "POLICY_LOSSES"]
