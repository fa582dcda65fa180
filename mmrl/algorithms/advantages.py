"""Advantage estimators.

Shared signature: ``fn(rewards[N], group_ids[N], state, *, <hyperparameters>) -> advantages[N]``.

Samples with the same ``group_ids`` value are completions of the same prompt. ``state`` is a dict the
estimator may keep across steps (BNPO's running Beta parameters); the trainer stores it in checkpoints, so a
resumed run continues with the same state. Every estimator goes through ``group_stats``, which rejects NaN
rewards and groups of one completion with a clear error.

An estimator may also take the step's context as named positional parameters (never hyperparameters):
``lengths`` ([N] completion token counts, OPO), ``components`` (reward component name -> ``(weight,
[N] values)``, GDPO) and ``keep`` ([N] bool, False on rows that are scored but not trained on: ReMax's greedy
baselines); ``compute_advantages`` passes what it declares.

``compute_advantages`` combines several reward components: ``sum`` (weighted sum, then the estimator) or
``per_component`` (the estimator on each component, then the weighted sum of the advantages — BNPO's advantage
decomposition, and the "normalise each then sum" of multi-reward GRPO).
"""
from __future__ import annotations

import inspect
import math

import torch

from mmrl.errors import ConfigError
from mmrl.plugins import ADVANTAGES
from rewards.temporal import tempsamp_transform

COMBINE_MODES = ("sum", "per_component")


def check_rewards(rewards: torch.Tensor, group_ids: torch.Tensor) -> None:
    """Reject NaN rewards and groups with fewer than two completions, naming the offending sample/group."""
    bad = torch.isnan(rewards).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"reward of completion {i} (group {int(group_ids[i])}) is NaN; {len(bad)} NaN reward(s) in "
                         "the batch — a reward function returned NaN")
    groups, counts = torch.unique(group_ids, return_counts=True)
    if (counts < 2).any():
        g = int(groups[counts < 2][0])
        raise ValueError(f"group {g} has 1 completion: group-relative advantages need at least 2 completions per "
                         "prompt (grpo.group_size >= 2)")


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample group mean, unbiased group std and group size, after ``check_rewards``.

    Computed in float64 (exact for a constant group of float32 rewards) and returned in ``rewards.dtype``: in float32 the mean of a constant group (e.g. eight
    rewards of 0.7) is off by an ulp, and ``(r - mean) / (std + eps)`` turns that round-off into advantages of
    up to ~0.2, all of one sign, instead of 0.
    """
    check_rewards(rewards, group_ids)
    r = rewards.double()
    _, inverse = torch.unique(group_ids, return_inverse=True)
    zeros = torch.zeros(int(inverse.max()) + 1, dtype=r.dtype, device=r.device)
    count = zeros.index_add(0, inverse, torch.ones_like(r))
    mean = zeros.index_add(0, inverse, r) / count
    sq = zeros.index_add(0, inverse, (r - mean[inverse]) ** 2)
    std = (sq / (count - 1)).sqrt()
    return tuple(x[inverse].to(rewards.dtype) for x in (mean, std, count))


def _context(estimator, components: dict[str, tuple[float, torch.Tensor]], **given: torch.Tensor | None) -> dict:
    """The context parameters (``components``, ``lengths``, ``keep``) that ``estimator`` declares."""
    wanted = inspect.signature(estimator).parameters
    context = {"components": components, **given}
    missing = [k for k in wanted if k in context and context[k] is None]
    if missing:
        raise ValueError(f"this advantage estimator needs the step's {missing[0]!r}")
    return {k: v for k, v in context.items() if k in wanted}


def compute_advantages(components: dict[str, torch.Tensor], weights: dict[str, float], group_ids: torch.Tensor,
                       estimator, combine: str, state: dict, lengths: torch.Tensor | None = None,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
    """Advantages of completions scored by several weighted reward components (``lengths``, ``keep``: context for
    the estimators that read it).

    ``sum``: ``A = est(sum_k w_k r_k)``. ``per_component``: ``A = sum_k w_k est(r_k)``, each component with its
    own estimator state (BNPO eq. for multi-component rewards; GDPO-style decoupled normalisation).
    """
    if combine == "sum":
        total = sum(weights[k] * components[k] for k in components)
        context = _context(estimator, {k: (weights[k], components[k]) for k in components}, lengths=lengths, keep=keep)
        adv = estimator(total, group_ids, state.setdefault("sum", {}), **context)
    elif combine == "per_component":
        adv = sum(weights[k] * estimator(components[k], group_ids, state.setdefault(k, {}),
                                         **_context(estimator, {k: (1.0, components[k])}, lengths=lengths,
                                                    keep=keep))
                  for k in components)
    else:
        raise ConfigError(f"config key 'grpo.reward_combine': {combine!r} is not one of {', '.join(COMBINE_MODES)}")
    if not torch.isfinite(adv).all():
        raise ValueError(f"the advantage estimator produced non-finite advantages (range {adv.min()}..{adv.max()})")
    return adv


@ADVANTAGES.register("grpo")
def grpo(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict, *, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath eq. 3 with outcome supervision): ``A_i = (r_i - mean_g) / (std_g + eps)``,
    std unbiased."""
    mean, std, _ = group_stats(rewards, group_ids)
    return (rewards - mean) / (std + eps)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): ``A_i = r_i - mean_g`` (no std)."""
    mean, _, _ = group_stats(rewards, group_ids)
    return rewards - mean


@ADVANTAGES.register("rloo")
def rloo(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): ``A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_g)``."""
    mean, _, count = group_stats(rewards, group_ids)
    return (rewards - mean) * count / (count - 1)


@ADVANTAGES.register("reward")
def reward(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict) -> torch.Tensor:
    """The raw reward, no baseline (REINFORCE; TOPR's ±1 rewards): ``A_i = r_i``."""
    check_rewards(rewards, group_ids)
    return rewards.clone()


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict, *, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025, arXiv 2501.03262): subtract the group mean, then whiten over the batch:
    ``a_i = r_i - mean_g``, ``A_i = (a_i - mean(a)) / sqrt(max(var(a), eps))`` with the population variance.

    OpenRLHF whitens over every completion token (longer completions weigh more); this whitens over
    completions, which is the same when completions have equal lengths."""
    mean, _, _ = group_stats(rewards, group_ids)
    centred = (rewards - mean).double()
    var = centred.var(unbiased=False).clamp(min=eps)
    return ((centred - centred.mean()) / var.sqrt()).to(rewards.dtype)


def beta_pdf(p: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Density of Beta(a, b) at ``p`` (``0 * log 0`` taken as 0, so Beta(1, b) is finite at p = 0)."""
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    a_, b_ = torch.tensor(a - 1, dtype=p.dtype), torch.tensor(b - 1, dtype=p.dtype)
    return torch.exp(torch.special.xlogy(a_, p) + torch.special.xlog1py(b_, -p) - log_norm)


def bnpo_parameters(success: torch.Tensor) -> tuple[float, float]:
    """BNPO's normalising Beta(alpha, beta) from the prompts' success rates ``success`` (one per group).

    Method of moments for the rates' own Beta(a, b): ``k = mu (1 - mu) / var - 1``, ``a = k mu``,
    ``b = k (1 - mu)`` (unbiased var); then ``alpha = max(1, 1 + a / 3)``, ``beta = max(1, 1 + b / 3)``, the
    variance-minimising choice of the paper. Falls back to (1, 1), plain REINFORCE, when the rates do not vary.
    """
    if len(success) < 2:
        return 1.0, 1.0
    mu, var = float(success.mean()), float(success.var())
    if var <= 0 or mu <= 0 or mu >= 1:
        return 1.0, 1.0
    k = mu * (1 - mu) / var - 1
    return max(1.0, 1 + k * mu / 3), max(1.0, 1 + k * (1 - mu) / 3)


@ADVANTAGES.register("bnpo")
def bnpo(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict, *, r_min: float = 0.0, r_max: float = 1.0,
         momentum: float = 0.0, max_weight: float = 1e6) -> torch.Tensor:
    """BNPO (Xiao et al. 2025, "Beta Normalization Policy Optimization", arXiv 2506.02864):
    ``A_i = (R_i - p_g) / f_N(p_g; alpha, beta)`` with ``p_g`` the group's mean of the rewards rescaled to [0, 1]
    (``(r - r_min) / (r_max - r_min)``) and ``f_N`` the Beta density whose parameters ``bnpo_parameters`` fits
    to the batch's success rates. Beta(1, 1) gives REINFORCE with a baseline; Beta(3/2, 3/2) gives GRPO (with
    the population std) scaled by pi / 8. ``1 / f_N`` is clamped to ``max_weight`` as the reference code does.

    ``momentum > 0`` smooths (alpha, beta) across steps in ``state`` (an exponential moving average); the
    reference code refits them on every batch (``momentum = 0``).
    """
    mean, _, _ = group_stats(rewards, group_ids)
    scale = r_max - r_min
    r, p = (rewards.double() - r_min) / scale, (mean.double() - r_min) / scale
    _, first = unique_first(group_ids)
    alpha, beta = bnpo_parameters(p[first].clamp(0, 1))
    if momentum > 0 and "alpha" in state:
        alpha = momentum * state["alpha"] + (1 - momentum) * alpha
        beta = momentum * state["beta"] + (1 - momentum) * beta
    state.update(alpha=alpha, beta=beta)
    weight = (1 / beta_pdf(p.clamp(0, 1), alpha, beta)).clamp(max=max_weight)
    return ((r - p) * weight).to(rewards.dtype)


def unique_first(group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct group ids and the row of each one's first completion."""
    groups, inverse = torch.unique(group_ids, return_inverse=True)
    rows = torch.arange(len(group_ids))
    first = torch.full((len(groups),), len(group_ids), dtype=torch.long).scatter_reduce(0, inverse, rows, "amin")
    return groups, first


@ADVANTAGES.register("ngrpo")
def ngrpo(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict, *, r_max: float = 1.0,
          eps: float = 1e-6) -> torch.Tensor:
    """NGRPO advantage calibration (Nan et al. 2025): a virtual sample with the maximum reward ``r_max`` joins each
    group's statistics (not the batch): ``A_i = (r_i - mean(R_g ∪ {r_max})) / (std(R_g ∪ {r_max}) + eps)``,
    unbiased std. An all-wrong group then gets negative advantages instead of zeros; an all-``r_max`` group
    still gets 0."""
    mean, std, count = group_stats(rewards, group_ids)
    mean_v = (mean * count + r_max) / (count + 1)
    # Sum of squares around the new mean: old spread + count * shift^2 + the virtual sample's own deviation.
    sq = std**2 * (count - 1) + count * (mean - mean_v) ** 2 + (r_max - mean_v) ** 2
    std_v = (sq / count).sqrt()  # unbiased over count + 1 samples
    return (rewards - mean_v) / (std_v + eps)


@ADVANTAGES.register("tempsamp")
def tempsamp(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict, *, tau: float = 0.8, alpha: float = 1.0,
             eps: float = 1e-6) -> torch.Tensor:
    """TempSamp-R1 (2025): GRPO advantages of ``tempsamp_transform(r)``, which flattens the reward differences
    between already-good answers (IoU above tau) and widens those below, for rewards in [0, 1] such as IoU."""
    return grpo(tempsamp_transform(rewards, tau, alpha), group_ids, state, eps=eps)


@ADVANTAGES.register("gpg")
def gpg(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict) -> torch.Tensor:
    """GPG (Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning", arXiv
    2504.02546; the formula of verl's ``compute_gpg_outcome_advantage``, ``f_norm = 1``): ``A_i = alpha (r_i - mean_g)``
    with ``alpha = N / M``, ``N`` the completions of the batch and ``M`` those with a non-zero reward (at least 1),
    which undoes the dilution of the gradient by groups whose rewards are all 0. Pair it with ``policy_loss: asymre``
    with ``tau: 0`` (GPG's plain ``-A logp``, no ratio)."""
    mean, _, _ = group_stats(rewards, group_ids)
    alpha = len(rewards) / max(int(torch.count_nonzero(rewards)), 1)
    return alpha * (rewards - mean)


@ADVANTAGES.register("opo")
def opo(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict, lengths: torch.Tensor) -> torch.Tensor:
    """OPO (Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline", arXiv 2505.23585; the formula of verl's
    ``compute_opo_outcome_advantage``): the length-weighted group baseline that minimises the gradient variance
    when the gradient norm grows with the length, ``A_i = r_i - sum_g(l_j r_j) / sum_g(l_j)``, ``l`` = completion
    token counts."""
    check_rewards(rewards, group_ids)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    r, l = rewards.double(), lengths.double()
    zeros = torch.zeros(int(inverse.max()) + 1, dtype=r.dtype)
    baseline = zeros.index_add(0, inverse, l * r) / zeros.index_add(0, inverse, l).clamp(min=1)
    return (r - baseline[inverse]).to(rewards.dtype)


@ADVANTAGES.register("gdpo")
def gdpo(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict,
         components: dict[str, tuple[float, torch.Tensor]], *, eps: float = 1e-4) -> torch.Tensor:
    """GDPO ("GDPO: Group reward-Decoupled Normalization Policy Optimization for Multi-reward RL Optimization",
    2026, arXiv 2601.05242; the formula of TRL's ``multi_objective_aggregation="normalize_then_sum"``): each reward
    component ``k`` normalised in its group first, so that a component with a large spread cannot drown the
    others, then weighted, summed and normalised over the batch:
    ``s_i = sum_k w_k (r_ik - mean_g r_k) / (std_g r_k + eps)``, ``A_i = (s_i - mean(s)) / (std(s) + eps)``
    (unbiased stds, TRL's eps 1e-4). Reads the components itself, so ``reward_combine`` should be ``sum``."""
    normalised = 0.0
    for weight, values in components.values():
        mean, std, _ = group_stats(values, group_ids)
        normalised = normalised + weight * (values - mean) / (std + eps)
    s = torch.as_tensor(normalised, dtype=rewards.dtype).double()
    return ((s - s.mean()) / (s.std() + eps)).to(rewards.dtype)


@ADVANTAGES.register("remax")
def remax(rewards: torch.Tensor, group_ids: torch.Tensor, state: dict, keep: torch.Tensor) -> torch.Tensor:
    """ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning
    Large Language Models", arXiv 2310.10505, Algorithm 1; verl's ``remax``): the baseline is the reward of the
    prompt's greedy completion, ``A_i = r_i - r(greedy_g)``. Needs ``rollout: remax``, which adds the greedy row
    of each group (``keep`` False there; its own advantage is 0 and it is not trained on)."""
    check_rewards(rewards, group_ids)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    greedy = ~keep.bool()
    zeros = torch.zeros(int(inverse.max()) + 1, dtype=torch.float64)
    count = zeros.index_add(0, inverse[greedy], torch.ones(int(greedy.sum()), dtype=torch.float64))
    if (count != 1).any():
        raise ValueError("advantage remax needs exactly one greedy completion per group (rollout: remax)")
    baseline = zeros.index_add(0, inverse[greedy], rewards[greedy].double())
    return torch.where(greedy, 0.0, rewards.double() - baseline[inverse]).to(rewards.dtype)
