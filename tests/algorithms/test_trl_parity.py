"""mmrl's losses against TRL's own GRPO loss code (``GRPOTrainer._compute_loss``, TRL 1.16, the version the ``bench``
extra pins), on the same random per-token log-probs, old and reference log-probs, advantages and masks.

TRL's loss runs unmodified: the trainer is built with ``object.__new__`` and given only the attributes
``_compute_loss`` reads, its per-token log-prob pass replaced by a function that returns our log-prob tensor (so
the gradient of both losses is taken with respect to the same leaf), its accelerator by a single-process one.
Every ``loss_type`` at both importance-sampling levels, beta off and on (with and without TRL's KL bias
correction), and each TRL option mmrl mirrors (``delta``, ``off_policy_mask_threshold``, ``top_entropy_quantile``,
``entropy_coef``) must give the same loss and the same gradient to 1e-6 (float64).

What cannot match, and why (also in docs/algorithms.md):
* ``cispo``: TRL's ``epsilon_high`` is the absolute bound on the ratio; mmrl's ``eps_high`` is relative
  (``1 + eps_high``), as for every other mmrl clip, so TRL's ``epsilon_high = e`` is mmrl's ``eps_high: e - 1``.
* ``sequence`` level: mmrl writes the sequence ratio in GSPO-token form (``_log_ratio``), whose value and, under
  mmrl's aggregations, gradient are those of TRL's broadcast sequence ratio; the KL correction uses the true
  sequence ratio (``kl_importance_ratio: sequence``), as TRL does.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")
from trl import GRPOTrainer  # noqa: E402

from mmrl.algorithms import AGGREGATIONS, POLICY_LOSSES, TOKEN_WEIGHTS  # noqa: E402
from mmrl.algorithms.entropy import AdaptiveEntropy, entropy_bonus  # noqa: E402
from mmrl.algorithms.kl import importance_weighted, k3  # noqa: E402
from mmrl.algorithms.losses import PolicyBatch  # noqa: E402
from mmrl.algorithms.token_weights import TokenBatch  # noqa: E402

B, T = 6, 7
LOSS_TYPES = ["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
AGGREGATION = {"grpo": "seq_mean_token_mean", "sapo": "seq_mean_token_mean", "dr_grpo": "seq_mean_token_sum_norm",
               "dapo": "token_mean", "bnpo": "token_mean", "cispo": "token_mean", "vespo": "token_mean",
               "luspo": "seq_mean_token_sum"}
PPO_FAMILY = ["grpo", "dr_grpo", "dapo", "bnpo", "luspo"]
EPS = {"token": (0.2, 0.28), "sequence": (0.2, 0.3)}
CISPO_MAX = 1.1  # TRL's absolute bound, low enough that some ratios are clipped


def test_the_pinned_trl_is_the_one_installed():
    assert trl.__version__ == "1.16.0", "the parity tests were written against TRL 1.16.0 (pyproject's bench extra)"


@dataclass
class Case:
    loss_type: str
    level: str = "token"
    beta: float = 0.0
    bias_correction: bool = True
    delta: float | None = None
    opsm: float | None = None
    top_entropy: float = 1.0
    entropy_coef: float = 0.0
    trl_args: dict = field(default_factory=dict)


def tensors(seed: int = 0) -> dict:
    """Random inputs in float64: completions of lengths 7, 5, 3, ...; per-sequence drifts of the old policy from
    -0.4 to 0.4 (so some sequences are masked by OPSM); advantages of both signs."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 5, 3, 7, 6, 2])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
    drift = torch.linspace(-0.4, 0.4, B, dtype=torch.float64)[:, None]
    old = logp + drift + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.2, -0.7, 0.4, -1.5, 0.9, -0.3], dtype=torch.float64)
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    return dict(logp=logp, old=old, ref=ref, adv=adv, mask=mask, entropy=entropy)


class OneProcess:
    """The accelerator calls ``_compute_loss`` makes, for a single process."""

    num_processes, sync_gradients = 1, True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x


def trl_trainer(case: Case) -> GRPOTrainer:
    """A ``GRPOTrainer`` with exactly the state ``_compute_loss`` reads (no model, no data)."""
    trainer = object.__new__(GRPOTrainer)
    low, high = EPS[case.level]
    if case.loss_type == "cispo":
        high = CISPO_MAX
    args = dict(use_bias_correction_kl=case.bias_correction, delta=case.delta, sapo_temperature_pos=1.0,
                sapo_temperature_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,
                vespo_lambda_neg=2.0, steps_per_generation=1, entropy_target=0.2, entropy_coef_delta=0.005,
                entropy_coef_min=0.0, entropy_coef_max=1.0)
    args.update(case.trl_args)
    adaptive = bool(case.trl_args.get("use_adaptive_entropy"))
    trainer.__dict__.update(
        args=SimpleNamespace(**args), loss_type=case.loss_type, importance_sampling_level=case.level,
        beta=case.beta, epsilon_low=low, epsilon_high=high, off_policy_mask_threshold=case.opsm,
        top_entropy_quantile=case.top_entropy, entropy_coef=case.entropy_coef, use_adaptive_entropy=adaptive,
        _entropy_bonus_enabled=case.entropy_coef != 0.0 or adaptive, _last_world_entropy=float("inf"),
        _entropy_window_stats=None, use_vllm=False, vllm_importance_sampling_correction=False,
        aux_loss_enabled=False, max_completion_length=T, current_gradient_accumulation_steps=1,
        model=SimpleNamespace(training=True), accelerator=OneProcess(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    return trainer


def trl_step(trainer: GRPOTrainer, x: dict, logp: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """TRL's loss of one micro-batch, its log-prob pass returning ``logp`` and ``entropy``."""
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, entropy, None)
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": x["mask"],
              "advantages": x["adv"], "old_per_token_logps": x["old"], "ref_per_token_logps": x["ref"],
              "num_items_in_batch": x["mask"].sum()}
    return trainer._compute_loss(None, inputs)


def trl_loss(case: Case, x: dict, logp: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    return trl_step(trl_trainer(case), x, logp, entropy)


def mmrl_config(case: Case) -> tuple[str, dict, str, dict]:
    """``(policy_loss, loss_args, loss_agg, token_weights)`` that reproduce ``case`` (the table in
    docs/algorithms.md)."""
    low, high = EPS[case.level]
    if case.loss_type == "cispo":
        name, args = "cispo", {"eps_low": 1.0, "eps_high": CISPO_MAX - 1, "level": case.level}
    elif case.loss_type == "sapo":
        name, args = "sapo", {"tau_pos": 1.0, "tau_neg": 1.05, "level": case.level}
    elif case.loss_type == "vespo":
        name, args = "vespo", {}
    else:
        name = "gspo" if case.level == "sequence" else "ppo_clip"
        args = {"eps_low": low, "eps_high": high, "delta": case.delta}
    weights = {}
    if case.opsm is not None:
        weights["opsm"] = {"threshold": case.opsm}
    if case.top_entropy < 1.0:
        weights["entropy_top"] = {"fraction": case.top_entropy}
    return name, args, AGGREGATION[case.loss_type], weights


def mmrl_loss(case: Case, x: dict, logp: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """The trainer's composition (``mmrl.trainer.optimise``): policy loss x token weights + beta x KL, aggregated."""
    name, args, agg, weights = mmrl_config(case)
    mask = x["mask"]
    batch = PolicyBatch(logp=logp, old_logp=x["old"], advantages=x["adv"], mask=mask, rewards=torch.zeros(B),
                        group_mean=torch.zeros(B), positive_len=torch.zeros(B), ref_logp=x["ref"])
    tokens = TokenBatch(ids=torch.zeros(B, T, dtype=torch.long), mask=mask, entropy=entropy.detach(),
                        group_ids=torch.arange(B), number_mask=torch.zeros(B, T), log_ratio=(logp - x["old"]).detach(),
                        advantages=x["adv"])
    tok = POLICY_LOSSES.bind(name, args)(batch).loss
    weight = torch.ones_like(mask)
    for w, w_args in weights.items():
        weight = weight * TOKEN_WEIGHTS.bind(w, w_args)(tokens)
    tok = tok * weight
    entropy_mask = TOKEN_WEIGHTS.bind("entropy_top", {"fraction": case.top_entropy})(tokens) \
        if case.top_entropy < 1.0 else mask
    if case.beta:
        level = case.level if case.bias_correction else "off"
        tok = tok + case.beta * importance_weighted(k3(logp, x["ref"]), logp, x["old"], mask, level)
    loss = AGGREGATIONS.get(agg)(tok, mask, int(mask.sum()), B, T)
    if case.entropy_coef:
        loss = loss - entropy_bonus(entropy, mask * entropy_mask, case.entropy_coef)
    return loss


def loss_and_grads(fn, case: Case, x: dict):
    logp = x["logp"].clone().requires_grad_(True)
    entropy = x["entropy"].clone().requires_grad_(True)
    loss = fn(case, x, logp, entropy)
    loss.backward()
    return loss.detach(), logp.grad, entropy.grad if entropy.grad is not None else torch.zeros_like(entropy)


def assert_parity(case: Case, seed: int = 0):
    x = tensors(seed)
    ours, theirs = loss_and_grads(mmrl_loss, case, x), loss_and_grads(trl_loss, case, x)
    assert float(ours[0]) == pytest.approx(float(theirs[0]), abs=1e-6, rel=1e-6), "loss"
    assert torch.allclose(ours[1], theirs[1], atol=1e-6, rtol=1e-6), f"gradient: {(ours[1] - theirs[1]).abs().max()}"
    assert torch.allclose(ours[2], theirs[2], atol=1e-6, rtol=1e-6), "entropy gradient"
    assert ours[1].abs().sum() > 0  # a gradient to compare


BETAS = [pytest.param(0.0, True, id="beta0"), pytest.param(0.04, True, id="beta-corrected"),
         pytest.param(0.04, False, id="beta-uncorrected")]


@pytest.mark.parametrize("beta,bias_correction", BETAS)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_trl_loss_type(loss_type, level, beta, bias_correction):
    assert_parity(Case(loss_type, level, beta, bias_correction))


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", PPO_FAMILY)
def test_two_sided_clipping(loss_type, level):
    x, delta = tensors(), 1.2 if level == "sequence" else 1.5
    log_ratio = x["logp"] - x["old"]
    ratio = torch.exp(log_ratio) if level == "token" else torch.exp(
        (log_ratio * x["mask"]).sum(-1, keepdim=True) / x["mask"].sum(-1, keepdim=True)).expand(B, T)
    assert ((ratio > delta) & (x["adv"][:, None] < 0) & x["mask"].bool()).any()
    # delta below the ratio of some negative-advantage tokens / sequences, so the cap binds
    assert_parity(Case(loss_type, level, delta=1.2 if level == "sequence" else 1.5))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_off_policy_sequence_mask(loss_type):
    x = tensors()
    drift = ((x["old"] - x["logp"]) * x["mask"]).sum(-1) / x["mask"].sum(-1)
    dropped = (x["adv"] < 0) & (drift > 0.1)
    assert 0 < int(dropped.sum()) < int((x["adv"] < 0).sum())  # the mask drops some negative sequences, not all
    assert_parity(Case(loss_type, opsm=0.1))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_top_entropy_quantile(loss_type):
    assert_parity(Case(loss_type, top_entropy=0.3))


@pytest.mark.parametrize("top_entropy", [1.0, 0.4])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_entropy_bonus(loss_type, top_entropy):
    assert_parity(Case(loss_type, top_entropy=top_entropy, entropy_coef=0.01))


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_all_options_at_once(level):
    top_entropy = 0.5 if level == "token" else 1.0  # see the next test
    assert_parity(Case("dapo", level, beta=0.04, delta=1.05, opsm=0.1, top_entropy=top_entropy, entropy_coef=0.02),
                  seed=1)


def test_sequence_level_with_the_entropy_mask_differs_in_gradient_only():
    """A deliberate difference. At the sequence level TRL multiplies its per-sequence loss by the per-token
    entropy mask; the sequence ratio's gradient then reaches every token of the sequence, the masked low-entropy
    ones included, which undoes what the mask is for ("Beyond the 80/20 Rule": the gradient flows through the
    forking tokens only). mmrl's GSPO-token form gives the same loss value with the gradient on the kept tokens
    alone."""
    case, x = Case("grpo", "sequence", top_entropy=0.3), tensors()
    ours, theirs = loss_and_grads(mmrl_loss, case, x), loss_and_grads(trl_loss, case, x)
    assert float(ours[0]) == pytest.approx(float(theirs[0]), abs=1e-6)
    kept = TOKEN_WEIGHTS.bind("entropy_top", {"fraction": 0.3})(TokenBatch(
        ids=torch.zeros(B, T, dtype=torch.long), mask=x["mask"], entropy=x["entropy"], group_ids=torch.arange(B),
        number_mask=torch.zeros(B, T))).bool()
    dropped = x["mask"].bool() & ~kept
    assert (ours[1][dropped] == 0).all() and (theirs[1][dropped] != 0).any()


def test_the_cases_exercise_clipping():
    """The random inputs put ratios on both sides of the clip bounds at both levels, so parity is not only of
    the unclipped branch."""
    x = tensors()
    valid = x["mask"].bool()
    token = torch.exp(x["logp"] - x["old"])[valid]
    seq = torch.exp(((x["logp"] - x["old"]) * x["mask"]).sum(-1) / x["mask"].sum(-1))
    for ratios, (low, high) in ((token, EPS["token"]), (seq, EPS["sequence"])):
        inside = (ratios > 1 - low) & (ratios < 1 + high)
        assert inside.any() and (~inside).any()
    assert math.isfinite(float(seq.max()))


def test_adaptive_entropy_coefficient_follows_trl_over_steps():
    """Skywork-OR1's controller, step by step against TRL's: entropies scaled to fall below, then rise above the
    0.2 target; the bonus is on only while the last step's entropy was at or below it."""
    case = Case("dapo", entropy_coef=0.01, trl_args={"use_adaptive_entropy": True, "entropy_coef_delta": 0.004})
    trainer, ours = trl_trainer(case), AdaptiveEntropy(0.01, target=0.2, delta=0.004)
    x = tensors()
    applied = []
    for scale in (0.05, 0.1, 0.5, 0.8, 0.05):
        logp = x["logp"].clone().requires_grad_(True)
        entropy = x["entropy"] * scale
        mean_entropy = float((entropy * x["mask"]).sum() / x["mask"].sum())
        expected = mmrl_loss(Case("dapo"), x, logp, entropy) - entropy_bonus(entropy, x["mask"], ours.applied())
        applied.append(ours.applied())
        assert float(trl_step(trainer, x, logp, entropy).detach()) == pytest.approx(float(expected.detach()), abs=1e-9)
        ours.update(mean_entropy)
        assert trainer.entropy_coef == pytest.approx(ours.coef, abs=1e-12)
    assert applied[0] == 0.0 and applied[1] > 0  # off until an entropy was measured (TRL: last entropy inf)
    assert applied[3] == 0.0 and applied[4] == 0.0  # off after the high-entropy steps
    assert ours.coef == pytest.approx(0.01 + 0.004 + 0.004 - 0.004 - 0.004 + 0.004)
