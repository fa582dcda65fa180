"""Helpers shared by the algorithm tests."""
from __future__ import annotations

import pytest
import torch

from mmrl.algorithms.losses import PolicyBatch


def _make_batch(logp, old, adv, mask=None, rewards=None, group_mean=None, ref=None, positive_len=None) -> PolicyBatch:
    b = len(adv)
    return PolicyBatch(logp=logp, old_logp=old, advantages=adv,
                       mask=torch.ones_like(old) if mask is None else mask,
                       rewards=torch.zeros(b) if rewards is None else rewards,
                       group_mean=torch.zeros(b) if group_mean is None else group_mean, ref_logp=ref,
                       positive_len=torch.zeros(b) if positive_len is None else positive_len)


@pytest.fixture
def make_batch():
    """``make_batch(logp, old, adv, mask=None, rewards=None, group_mean=None, ref=None)`` -> PolicyBatch
    (all-ones mask and zero rewards unless given)."""
    return _make_batch
