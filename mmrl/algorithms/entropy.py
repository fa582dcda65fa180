"""Entropy regularisation: a bonus ``-coef * H`` on the loss, with a fixed or an adaptive coefficient.

``L = L_policy - coef * H``, ``H`` the mean per-token entropy of the policy over the loss tokens (TRL's
``entropy_coef``; the same ``H`` whatever the policy loss's aggregation). The adaptive controller is
Skywork-OR1's (He et al. 2025, "Skywork Open Reasoner 1 Technical Report", arXiv 2505.22312; TRL's
``use_adaptive_entropy``): the bonus is applied only while the entropy is at or below a target, and after each
optimizer step the coefficient moves by ``delta`` towards more bonus when the entropy was at or below the
target, less otherwise, within ``[coef_min, coef_max]``. The trainer's options: ``grpo.entropy_coef``,
``grpo.adaptive_entropy`` and its ``entropy_target``, ``entropy_coef_delta``, ``entropy_coef_min``,
``entropy_coef_max`` (TRL's names and defaults).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float, n_tokens: int | None = None) -> torch.Tensor:
    """``coef * sum(H * mask) / n``: the term subtracted from the loss (``entropy`` with gradients). ``n`` is
    ``n_tokens`` when given (a whole batch's token count, so that the bonuses of its micro-batches add up to the
    batch's), else ``sum(mask)``."""
    count = mask.sum().clamp(min=1) if n_tokens is None else max(n_tokens, 1)
    return coef * (entropy * mask).sum() / count


@dataclass
class AdaptiveEntropy:
    """Skywork-OR1's adaptive entropy coefficient (``coef`` starts at the configured one); the defaults are TRL
    1.16's."""

    coef: float
    target: float = 0.2
    delta: float = 0.005
    coef_min: float = 0.0
    coef_max: float = 1.0
    last_entropy: float = math.inf
    """The mean entropy of the previous optimizer step; infinite before the first, so that the first step has no
    bonus (TRL's: the bonus waits for a measured entropy)."""

    def applied(self) -> float:
        """The coefficient this step's bonus uses: ``coef`` while the last entropy is at or below the target, else
        0."""
        return self.coef if self.last_entropy <= self.target else 0.0

    def update(self, entropy: float) -> None:
        """After an optimizer step whose mean token entropy was ``entropy``: ``coef += delta`` if it was at or
        below the target, else ``coef -= delta``, clamped to ``[coef_min, coef_max]``."""
        step = self.delta if entropy <= self.target else -self.delta
        self.coef = min(max(self.coef + step, self.coef_min), self.coef_max)
        self.last_entropy = entropy

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s coefficient and last entropy (the bounds stay the configured ones)."""
        self.coef, self.last_entropy = state["coef"], state["last_entropy"]
