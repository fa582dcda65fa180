"""Policy losses.

Shared signature: ``fn(batch: PolicyBatch, *, <hyperparameters>) -> LossTerms`` where ``LossTerms.loss`` is the
per-token loss ``[B, T]`` (aggregated afterwards by a function from ``aggregation``) and ``LossTerms.clipped``
marks tokens whose ratio was clipped (for the ``clip_frac`` metric; ``None`` when the loss does not clip).

Notation: ``logp`` = log pi_theta(y_t | ...), ``old`` = log pi_old (the policy that sampled the tokens;
equal to ``logp.detach()`` on-policy, mu = 1), ``rho = exp(logp - old)``, ``A`` = the sequence's advantage
broadcast over its tokens, ``sg`` = stop-gradient. On-policy (rho = 1) the PPO-family losses
(``ppo_clip``, ``ngrpo_asym``, ``gspo``, ``cispo``, ``bapo``, ``sapo``, ``vespo``, ``kl_cov``) all have
gradient ``-A`` per token, the plain policy gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from mmrl.plugins import POLICY_LOSSES


@dataclass
class PolicyBatch:
    """Inputs of a policy loss for ``B`` completions of up to ``T`` tokens."""

    logp: torch.Tensor
    """[B, T] log-probs of the sampled tokens under the current policy (with gradients)."""
    old_logp: torch.Tensor
    """[B, T] log-probs under the policy that sampled them (no gradients)."""
    advantages: torch.Tensor
    """[B] one advantage per completion."""
    mask: torch.Tensor
    """[B, T] 1 for completion tokens that enter the loss."""
    rewards: torch.Tensor
    """[B] the completion's scalar reward."""
    group_mean: torch.Tensor
    """[B] mean reward of the completion's group (the prompt's success rate for binary rewards)."""
    positive_len: torch.Tensor
    """[B] mean length of the group's completions with a positive advantage (0 when there are none)."""
    ref_logp: torch.Tensor | None = None
    """[B, T] log-probs under the reference policy, when the loss or the KL term needs them."""
    progress: float = 0.0
    """How far training is: the RL step over the run's steps, in [0, 1) (for losses whose bounds follow a
    schedule)."""


def positive_lengths(lengths: torch.Tensor, advantages: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Per row: mean length of the completions of its group whose advantage is positive (0 if none)."""
    out = torch.zeros(len(lengths), dtype=torch.float32)
    for g in torch.unique(group_ids).tolist():
        rows = group_ids == g
        pos = rows & (advantages > 0)
        out[rows] = lengths[pos].float().mean() if pos.any() else 0.0
    return out


class LossTerms(NamedTuple):
    loss: torch.Tensor
    clipped: torch.Tensor | None


def _ratio(b: PolicyBatch) -> torch.Tensor:
    return torch.exp(b.logp - b.old_logp)


def _sequence_log_ratio(b: PolicyBatch) -> torch.Tensor:
    """``mean_t (logp - old)`` over each completion's tokens, detached, ``[B, 1]``."""
    tokens = b.mask.sum(-1, keepdim=True).clamp(min=1)
    return (((b.logp - b.old_logp) * b.mask).sum(-1, keepdim=True) / tokens).detach()


LEVELS = ("token", "sequence")
"""Importance-sampling levels of the losses that take ``level``: one ratio per token, or GSPO's one per sequence."""


def _log_ratio(b: PolicyBatch, level: str) -> torch.Tensor:
    """``log rho`` per token (``level: token``), or GSPO-token's sequence ratio ``logp - sg(logp) +
    sg(mean_t (logp - old))`` (``level: sequence``): its value is the sequence's mean log-ratio on every token and
    its gradient, under any aggregation whose token weights are constant within a sequence (all of mmrl's),
    equals that of the sequence ratio itself (Zheng et al. 2025, GSPO-token), clamped at 10 against overflow."""
    if level == "token":
        return b.logp - b.old_logp
    if level == "sequence":
        return (b.logp - b.logp.detach() + _sequence_log_ratio(b)).clamp(max=10.0)
    raise ValueError(f"importance-sampling level {level!r} is not one of {', '.join(LEVELS)}")


def _clip_objective(ratio: torch.Tensor, adv: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float,
                    delta: float | None = None):
    """``-min(rho A, clip(rho, low, high) A)`` and the mask of tokens where the clipped branch is active.

    ``delta``: INTELLECT-2's two-sided clipping (Prime Intellect 2025, arXiv 2505.07291), the
    unclipped branch capped too, ``-min(min(rho, delta) A, clip(rho) A)``, which bounds the loss of a negative-
    advantage token whose ratio exploded; for ``delta > high`` it is dual-clip PPO with ``c = delta``."""
    low, high = (torch.as_tensor(x, dtype=ratio.dtype, device=ratio.device) for x in (low, high))
    clipped_ratio = torch.minimum(torch.maximum(ratio, low), high)
    capped = ratio if delta is None else ratio.clamp(max=delta)
    unclipped, clipped = capped * adv, clipped_ratio * adv
    cut = clipped < unclipped if delta is None else (clipped < unclipped) | (ratio > delta)
    return -torch.minimum(unclipped, clipped), cut


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(b: PolicyBatch, *, eps_low: float = 0.2, eps_high: float = 0.2, dual_clip: float = 0.0,
             delta: float | None = None) -> LossTerms:
    """PPO-clip per token (Schulman et al. 2017, eq. 7), asymmetric bounds as DAPO's clip-higher (Yu et al.
    2025, eq. 10): ``L = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``.

    ``dual_clip = c > 1`` adds dual-clip PPO (Ye et al. 2020, eq. 5) for negative advantages:
    ``L = min(-min(rho A, clip(rho) A), -c A)``, bounding the loss when rho >> 1 on a bad token.
    ``delta`` is INTELLECT-2's two-sided clipping (``_clip_objective``; TRL's ``delta``).
    """
    adv = b.advantages.unsqueeze(-1)
    loss, clipped = _clip_objective(_ratio(b), adv, 1 - eps_low, 1 + eps_high, delta)
    if dual_clip > 0:
        bound = -dual_clip * adv
        dual = (adv < 0) & (loss > bound)
        loss = torch.where(dual, bound.expand_as(loss), loss)
        clipped = clipped | dual
    return LossTerms(loss, clipped)


@POLICY_LOSSES.register("trust_region_stretch")
def trust_region_stretch(b: PolicyBatch, *, eps_low: float = 0.2, eps_high_start: float = 0.2,
                         eps_high_end: float = 0.28, stretch_fraction: float = 1.0) -> LossTerms:
    """CAD-RL's Trust Region Stretch ("From Intent to Execution", 2025): PPO-clip whose upper bound widens during
    training so that low-probability tokens (a new dimension, a new operation) can grow, ``eps_high(p) =
    eps_high_start + (eps_high_end - eps_high_start) * min(1, p / stretch_fraction)`` at progress ``p`` (step /
    steps); the lower bound stays ``eps_low``. The paper's exact schedule is not public: this linear one is our
    reading (``stretch_fraction`` = the share of the run over which it widens)."""
    ramp = min(1.0, b.progress / stretch_fraction) if stretch_fraction > 0 else 1.0
    return ppo_clip(b, eps_low=eps_low, eps_high=eps_high_start + (eps_high_end - eps_high_start) * ramp)


@POLICY_LOSSES.register("ngrpo_asym")
def ngrpo_asym(b: PolicyBatch, *, eps_pos: float = 0.24, eps_neg: float = 0.16) -> LossTerms:
    """NGRPO's asymmetric clipping (Nan et al. 2025, "NGRPO: Negative-enhanced Group Relative Policy
    Optimization"): a looser trust region for positive advantages, ``clip(rho, 1 - eps_pos, 1 + eps_pos)``, and
    a stricter one for negative advantages, ``clip(rho, 1 - eps_neg, 1 + eps_neg)``; then the PPO objective.
    Since only the upper bound binds when A > 0 and only the lower when A < 0, this equals ``ppo_clip`` with
    ``eps_high = eps_pos`` and ``eps_low = eps_neg`` (the official script's 0.24 / 0.16)."""
    adv = b.advantages.unsqueeze(-1)
    eps = torch.where(adv > 0, eps_pos, eps_neg)
    loss, clipped = _clip_objective(_ratio(b), adv, 1 - eps, 1 + eps)
    return LossTerms(loss, clipped)


@POLICY_LOSSES.register("gspo")
def gspo(b: PolicyBatch, *, eps_low: float = 3e-4, eps_high: float = 4e-4, delta: float | None = None) -> LossTerms:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 5 and GSPO-token): one importance ratio
    per sequence, ``s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|) = exp(mean_t log rho_t)``, clipped with tiny bounds
    (the paper's 3e-4 / 4e-4). Written in the GSPO-token form ``s_it = sg[s_i] * pi_t / sg[pi_t]``, whose
    value is ``s_i`` on every token and whose gradient with seq_mean_token_mean aggregation equals GSPO's
    (use ``loss_agg: seq_mean_token_mean``). ``delta``: two-sided clipping of the sequence ratio, as in
    ``ppo_clip``. With ``loss_agg: seq_mean_token_sum`` it is LUSPO (Length-Unbiased Sequence Policy
    Optimization, arXiv 2602.05261): each sequence's GSPO loss scaled by its length."""
    adv = b.advantages.unsqueeze(-1)
    loss, clipped = _clip_objective(torch.exp(_log_ratio(b, "sequence")), adv, 1 - eps_low, 1 + eps_high, delta)
    return LossTerms(loss, clipped)


@POLICY_LOSSES.register("cispo")
def cispo(b: PolicyBatch, *, eps_low: float = 1.0, eps_high: float = 0.28, level: str = "token") -> LossTerms:
    """CISPO (MiniMax-M1, 2025, eq. 4-5): clip the importance weight, not the update, so every token keeps a
    gradient: ``L = -sg(clip(rho, 1 - eps_low, 1 + eps_high)) * A * logp``. The paper sets no lower bound
    (``eps_low = 1`` clips at 0) and tunes only ``eps_high``. ``level: sequence`` uses GSPO's sequence ratio.
    TRL's ``epsilon_high`` for cispo is the absolute bound ``1 + eps_high`` (ScaleRL's eps_max = 5 is
    ``eps_high: 4``)."""
    ratio = torch.exp(_log_ratio(b, level)).detach()
    weight = ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = -weight * b.advantages.unsqueeze(-1) * b.logp
    return LossTerms(loss, weight != ratio)


@POLICY_LOSSES.register("sapo")
def sapo(b: PolicyBatch, *, tau_pos: float = 1.0, tau_neg: float = 1.05, level: str = "token") -> LossTerms:
    """SAPO ("Soft Adaptive Policy Optimization", Qwen team 2025, arXiv 2511.20347; TRL's and verl's ``sapo``): a smooth
    gate instead of the hard clip, ``L = -f(rho) A`` with ``f(rho) = (4 / tau) sigmoid(tau (rho - 1))``, ``tau =
    tau_pos`` for ``A > 0`` and ``tau_neg`` otherwise (the paper's 1.0 / 1.05: negative tokens decay faster). ``f(1) = 2
    / tau`` and ``f'(1) = 1``, so on-policy the gradient is ``-A`` per token; far off-policy it fades smoothly instead
    of being cut. ``level: sequence`` gates GSPO's sequence ratio. As TRL's ``sapo``; use ``loss_agg:
    seq_mean_token_mean`` for its aggregation."""
    adv = b.advantages.unsqueeze(-1)
    tau = torch.where(adv > 0, tau_pos, tau_neg)
    gate = torch.sigmoid(tau * (torch.exp(_log_ratio(b, level)) - 1)) * 4 / tau
    return LossTerms(-gate * adv, None)


def vespo_weights(log_ratio: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, *, k_pos: float, lambda_pos: float,
                  k_neg: float, lambda_neg: float) -> torch.Tensor:
    """VESPO's gamma weight per sequence ``[B, 1]`` (detached): ``phi(w) = exp(lambda + k log w - lambda w)`` of
    the full-sequence ratio ``w = exp(sum_t log rho_t)`` (token log-ratios clamped to ±20, ``log w`` to
    [log 1e-8, 20]); ``(k, lambda) = (k_pos, lambda_pos)`` for ``A >= 0`` else ``(k_neg, lambda_neg)``,
    ``lambda >= 1e-4``; a non-finite weight becomes 0. ``phi(1) = 1``, peaked at ``w = k / lambda``."""
    with torch.no_grad():
        log_w = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True).clamp(math.log(1e-8), 20.0)
        k = torch.where(adv >= 0, k_pos, k_neg)
        lam = torch.where(adv >= 0, lambda_pos, lambda_neg).clamp(min=1e-4)
        return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


@POLICY_LOSSES.register("vespo")
def vespo(b: PolicyBatch, *, k_pos: float = 2.0, lambda_pos: float = 3.0, k_neg: float = 3.0,
          lambda_neg: float = 2.0) -> LossTerms:
    """VESPO ("Variational Sequence-Level Soft Policy Optimization", arXiv 2602.10693; as TRL 1.16's ``vespo``):
    REINFORCE weighted by a smooth function of the sequence's importance ratio instead of a clip,
    ``L = -sg(phi(w)) A logp`` with the gamma weight ``vespo_weights`` (defaults TRL's: k = 2, lambda = 3 for
    ``A >= 0``; k = 3, lambda = 2 for ``A < 0``). Use ``loss_agg: token_mean`` (TRL's aggregation for vespo)."""
    adv = b.advantages.unsqueeze(-1)
    phi = vespo_weights(b.logp - b.old_logp, b.mask, adv, k_pos=k_pos, lambda_pos=lambda_pos, k_neg=k_neg,
                        lambda_neg=lambda_neg)
    return LossTerms(-phi * adv * b.logp, None)


def _centred_covariance(b: PolicyBatch) -> torch.Tensor:
    """Per-token ``(A - mean A) (logp - mean logp)`` over the batch's loss tokens (detached), the covariance term
    whose large values drive entropy collapse (Cui et al. 2025)."""
    valid = b.mask.bool()
    adv = b.advantages.unsqueeze(-1).expand_as(b.logp)
    logp = b.logp.detach()
    return (adv - adv[valid].mean()) * (logp - logp[valid].mean())


@POLICY_LOSSES.register("clip_cov")
def clip_cov(b: PolicyBatch, *, eps_low: float = 0.2, eps_high: float = 0.2, ratio: float = 2e-4, lower: float = 1.0,
             upper: float = 5.0) -> LossTerms:
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv
    2505.22617; the formula of verl's ``compute_policy_loss_clip_cov``): PPO-clip, but ``max(1, int(ratio * N))`` of the
    ``N`` loss tokens whose centred covariance ``_centred_covariance`` lies in ``(lower, upper)`` and that PPO did not
    already clip are drawn at random (torch's global generator, seeded by the run) and get no gradient (loss 0), which
    stops high-covariance tokens from collapsing the entropy."""
    adv = b.advantages.unsqueeze(-1)
    loss, clipped = _clip_objective(_ratio(b), adv, 1 - eps_low, 1 + eps_high)
    cov = _centred_covariance(b)
    candidates = ((cov > lower) & (cov < upper) & b.mask.bool() & ~clipped).nonzero()
    count = max(int(ratio * float(b.mask.sum())), 1)
    chosen = candidates[torch.randperm(len(candidates))[:count]]
    drop = torch.zeros_like(clipped)
    drop[chosen[:, 0], chosen[:, 1]] = True
    return LossTerms(torch.where(drop, torch.zeros_like(loss), loss), clipped | drop)


@POLICY_LOSSES.register("kl_cov")
def kl_cov(b: PolicyBatch, *, ratio: float = 2e-4, kl_coef: float = 1.0) -> LossTerms:
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617; the formula of verl's ``compute_policy_loss_kl_cov``): the unclipped
    importance- weighted objective ``-rho A``, plus ``kl_coef |logp - old|`` on the ``max(1, int(ratio * N))`` loss
    tokens with the largest centred covariance ``_centred_covariance`` (of ``N``), a KL pull on exactly the tokens that
    drive entropy collapse. ``clipped`` marks those tokens."""
    adv = b.advantages.unsqueeze(-1)
    log_ratio = b.logp - b.old_logp
    valid = b.mask.bool()
    cov = _centred_covariance(b).masked_fill(~valid, -math.inf)
    top = torch.topk(cov.flatten(), max(1, int(ratio * int(valid.sum())))).indices
    pulled = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    pulled[top] = True
    pulled = pulled.view_as(cov) & valid
    loss = -torch.exp(log_ratio) * adv + torch.where(pulled, kl_coef * log_ratio.abs(), torch.zeros_like(log_ratio))
    return LossTerms(loss, pulled)


@POLICY_LOSSES.register("topr")
def topr(b: PolicyBatch) -> LossTerms:
    """TOPR (Le Roux et al. 2025, "Tapered Off-Policy REINFORCE", eq. 8 with a- = 0 and the other limits 1):
    ``L = -w_i A_i logp`` with ``w_i = 1`` for ``A_i >= 0`` (SFT-like, no importance weight) and
    ``w_i = sg(clip(pi(y_i) / mu(y_i), 0, 1))`` with the full-sequence ratio for ``A_i < 0``, so negatives are
    tapered and the loss needs no KL. The paper uses raw ±1 rewards (``advantage: reward``); per-sequence
    length normalisation is ``loss_agg: seq_mean_token_mean``."""
    seq_ratio = torch.exp(((b.logp - b.old_logp) * b.mask).sum(-1, keepdim=True).clamp(max=0.0)).detach()
    adv = b.advantages.unsqueeze(-1)
    weight = torch.where(adv >= 0, torch.ones_like(seq_ratio), seq_ratio)
    return LossTerms(-weight * adv * b.logp, None)


def bapo_bounds(ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *, target: float, low: tuple[float, float],
                high: tuple[float, float], step: float) -> tuple[float, float]:
    """BAPO's adaptive clip bounds (Xi et al. 2025, Algorithm 1).

    Start at ``c_low = low[0]``, ``c_high = high[0]``. While the positive tokens' share of the gradient-carrying
    contribution ``sum |rho A|`` is below ``target``, widen ``c_high`` by ``step`` (up to ``high[1]``), then raise
    ``c_low`` by ``step`` (up to ``low[1]``), which drops more low-ratio negative tokens from the update.
    """
    c_low, c_high = low[0], high[0]

    def positive_share() -> float:
        _, clipped = _clip_objective(ratio, adv, c_low, c_high)
        contrib = (ratio * adv).abs() * mask * (~clipped)
        total = float(contrib.sum())
        return float((contrib * (adv > 0)).sum()) / total if total > 0 else 1.0

    while positive_share() < target:
        if c_high + step <= high[1] + 1e-9:
            c_high += step
        elif c_low + step <= low[1] + 1e-9:
            c_low += step
        else:
            break
    return c_low, c_high


@POLICY_LOSSES.register("bapo")
def bapo(b: PolicyBatch, *, target: float = 0.5, low_min: float = 0.6, low_max: float = 0.9, high_min: float = 1.2,
         high_max: float = 3.0, step: float = 0.05) -> LossTerms:
    """BAPO (Xi et al. 2025, "Balanced Policy Optimization with Adaptive Clipping"):
    ``L = -min(rho A, clip(rho, c_low, c_high) A)`` with absolute bounds chosen per (micro-)batch by
    ``bapo_bounds`` so that positive-advantage tokens carry at least ``target`` of the update (defaults: the
    paper's rho_0 = 0.5, c_low in [0.6, 0.9], c_high in [1.2, 3.0])."""
    ratio, adv = _ratio(b), b.advantages.unsqueeze(-1)
    c_low, c_high = bapo_bounds(ratio.detach(), adv, b.mask, target=target, low=(low_min, low_max),
                                high=(high_min, high_max), step=step)
    loss, clipped = _clip_objective(ratio, adv, c_low, c_high)
    return LossTerms(loss, clipped)


@POLICY_LOSSES.register("apo", needs_reference=True)
def apo(b: PolicyBatch, *, eps: float = 0.2, kl_coef: float = 1e-3, dads_scale: float = math.e,
        stcr_base: float = 1.00001) -> LossTerms:
    """APO (Hong et al. 2025, "Asymmetric Policy Optimization", arXiv 2506.21655; as in the official View-R1
    code): PPO-clip plus two asymmetric terms.

    * Difficulty-Adaptive Divergence Shaping, on positive samples (A > 0): their k3 KL to the reference is
      weighted by ``f = 1 - exp(-dads_scale * acc)``, ``acc`` = the group's mean reward (success rate; f = 1
      when acc is 0 or 1), so hard prompts pull correct answers less towards the reference. Other samples: 1.
    * Suboptimal Trajectory Complexity Regularization, on negative samples (A < 0): ``A <- A (1 + w)`` with
      ``w = 1 - stcr_base^-(L - L_pos)`` when the completion is longer than the group's positive completions
      on average (``L_pos``), else 0: long wrong answers are pushed down harder.

    ``L = -min(rho A', clip(rho, 1 - eps, 1 + eps) A') + kl_coef * f * k3(logp, ref)``. Needs reference
    log-probs (computed even when ``beta = 0``).
    """
    adv = b.advantages
    longer = (b.mask.sum(-1) - b.positive_len).clamp(min=0)
    w = -torch.expm1(-longer.double() * math.log(stcr_base)).to(adv.dtype)  # 1 - base^-longer, accurate near 0
    stcr = torch.where((adv < 0) & (b.positive_len > 0), w, torch.zeros_like(adv))
    adv = (adv * (1 + stcr)).unsqueeze(-1)
    loss, clipped = _clip_objective(_ratio(b), adv, 1 - eps, 1 + eps)
    acc = b.group_mean.clamp(0, 1)
    dads = torch.where((acc > 0) & (acc < 1), 1 - torch.exp(-dads_scale * acc), torch.ones_like(acc))
    f = torch.where(b.advantages > 0, dads, torch.ones_like(acc)).unsqueeze(-1)
    d = b.ref_logp - b.logp
    return LossTerms(loss + kl_coef * f * (torch.exp(d) - d - 1), clipped)


@POLICY_LOSSES.register("nsr")
def nsr(b: PolicyBatch, *, pos_weight: float = 0.1, neg_weight: float = 1.0, eps: float = 0.2) -> LossTerms:
    """Weighted REINFORCE (Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM
    Reasoning"): positive- and negative-sample reinforcement weighted apart,
    ``A' = pos_weight * max(A, 0) + neg_weight * min(A, 0)``, then the PPO-clip objective (as the authors' code).
    With ±1 advantages (``advantage: reward`` on ±1 rewards) the defaults are W-REINFORCE (lambda = 0.1);
    ``pos_weight: 0`` is NSR alone, ``neg_weight: 0`` PSR alone."""
    adv = b.advantages
    weighted = (pos_weight * adv.clamp(min=0) + neg_weight * adv.clamp(max=0)).unsqueeze(-1)
    loss, clipped = _clip_objective(_ratio(b), weighted, 1 - eps, 1 + eps)
    return LossTerms(loss, clipped)


@POLICY_LOSSES.register("opmd")
def opmd(b: PolicyBatch, *, tau: float = 0.2) -> LossTerms:
    """OPMD (Kimi k1.5; Yao et al. 2025, "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm"):
    group-relative REINFORCE plus a squared log-ratio pull to the behaviour policy,
    ``L = -A logp + (tau / 2) (logp - old)^2`` per token, no importance ratio or clipping. Use with
    ``advantage: dr_grpo`` (``A = r - mean_g``)."""
    adv = b.advantages.unsqueeze(-1)
    return LossTerms(-adv * b.logp + 0.5 * tau * (b.logp - b.old_logp) ** 2, None)


@POLICY_LOSSES.register("asymre")
def asymre(b: PolicyBatch, *, tau: float = 0.1) -> LossTerms:
    """AsymRE (Arnal et al. 2025, "Asymmetric REINFORCE for off-Policy RL"; in Yao et al. 2025's form): the
    REINFORCE baseline lowered by ``tau`` (V = mean_g - tau), ``L = -(A + tau) logp``, i.e. REINFORCE plus an
    SFT-like pull ``-tau logp`` on the sampled data; policy improvement is guaranteed off-policy for tau > 0.
    Use with ``advantage: dr_grpo``."""
    return LossTerms(-(b.advantages.unsqueeze(-1) + tau) * b.logp, None)


def offpolicy_guidance(logp: torch.Tensor, advantages: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """Per-token loss of an off-policy completion (TempSamp-R1's ground-truth slot): ``-A f(pi_theta)``.

    The ground truth was not sampled from any policy: its behaviour probability is taken as 1, so the importance
    ratio is ``pi_theta(y_t)`` itself and is not clipped (clipping against a ratio that is not near 1 would cut
    the guidance off). ``gamma > 0`` applies the regularised shaping of off-policy guidance in LUFFY (Yan et al.
    2025, "Learning to Reason under Off-Policy Guidance"), ``f(p) = p / (p + gamma)``, whose gradient
    ``gamma / (p + gamma)^2`` lifts low-probability tokens of the guidance instead of letting ``p`` scale them
    towards 0; ``gamma = 0`` is the plain ratio ``f(p) = p``. TempSamp-R1's abstract says off-policy guidance is
    mixed into the group; this weighting is our choice (its code was not available), documented in
    docs/algorithms.md.
    """
    p = torch.exp(logp)
    shaped = p / (p + gamma) if gamma > 0 else p
    return -advantages[:, None] * shaped
