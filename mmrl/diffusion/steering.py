"""FK steering (Feynman–Kac particle resampling) of diffusion sampling at inference, and its best-of-N baseline.

Singhal et al. 2025, "A General Framework for Inference-time Scaling and Steering of Diffusion Models". Each
image is sampled as N particles by the ordinary sampler (``mmrl.diffusion.samplers``: DDIM for SD 1.x, the flow
SDE or Euler ODE for SD3/FLUX-style pipelines). After the update of a scheduled step ``i``, the clean-image
prediction x̂0 of every particle (``Step.pred_original_sample``: ``(x_t − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t)`` for DDIM,
``x_σ − σ·v`` for flow matching) is decoded by the VAE and scored with an image reward ``r``; a potential ``G``
turns the particle's reward history into a weight, and the N particles of each image are resampled
multinomially in proportion to their weights, so the remaining denoiser calls go to the trajectories whose
predicted images score best. Potentials (``POTENTIALS``; r_t the reward at this scored step)::

    MAX   G_t = exp(λ·max(r_t, r_prev))   r_prev = running max of the particle's earlier rewards
    ADD   G_t = exp(λ·Σ_{s≤t} r_s)        sum over the particle's scored steps so far
    DIFF  G_t = exp(λ·(r_t − r_prev))     r_prev = the particle's previous reward
    RT    G_t = exp(λ·r_t)

all computed as log-weights ``log G`` (no overflow at λ = 10). Self-normalised weights ``w = softmax(log w)``
over an image's particles, effective sample size ``ESS = 1/Σ w²``. At the final step the output latents are
scored and their potential corrected as the reference does, so that the product of potentials along a path is
the intended tilt: ``log G_T − Σ_{s<T} log G_s`` for MAX, ADD and RT (giving exp(λ·max_s r_s), exp(λ·Σ_s r_s),
exp(λ·r_T)), plain ``log G_T`` for DIFF (its product telescopes to exp(λ·r_T)). The output of each image is the
final particle with the highest reward, as the reference's evaluation keeps.

Compute: N particles × ``steps`` steps is N·steps denoiser calls per image, the same as best-of-N
(``fk_sample`` with no scheduled steps: N independent samples, same sampler and seeds, keep the highest final
reward), so best-of-N at the same N is the equal-compute baseline. FK also decodes and scores x̂0 at every
scheduled step (N VAE decodes and reward calls each), which best-of-N does not; ``denoiser_calls`` counts
network evaluations per image row (classifier-free guidance doubles both methods' batches alike).

Choices, against the reference implementation (github.com/zacharyhorvitz/Fk-Diffusion-Steering, ``fkd_class.py``):

* Before the first scored step ``r_prev`` is "none": MAX uses ``r_t`` alone. The reference starts every
  particle at ``reward_min_value = 0``, which makes MAX ignore negative rewards (``color_target``,
  ``jpeg_compressibility`` are ≤ 0); ADD and DIFF start at 0 exactly as there.
* Adaptive resampling (``adaptive=True``): at a scored step with ESS ≥ N/2 the particles are kept and their
  log-weights carry to the next scored step (standard adaptive SMC); the reference forgets that step's weights.
  Under a fixed schedule every scored step resamples and the two agree.
* The final potential scores the decoded output latents (the images returned), not the last step's x̂0; they
  differ slightly (DDIM's final ᾱ < 1, the SDE's last noisy step).
* The reference resamples once more at the final step when ESS < N/2 and then keeps the highest-reward image;
  resampling can only drop particles, so the maximum over the population before it is at least as good: we keep
  that maximum and return the final weights (``ParticleResult.log_weights``) without the last resampling.
* Resampling draws from its own generator, so the sampler's noise stream is that of plain sampling: with N = 1
  steering returns exactly what ``rollout`` does with the same generator.

There is no per-particle sampler state besides the latents: the SDE's noise is drawn for every row at every
step from one generator, so copies made by resampling diverge again (with a deterministic sampler, η = 0 or the
ODE, copies stay identical; hence the stochastic default of ``SteerConfig.stochasticity``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmrl.diffusion.config import RewardSpec, SteerConfig
from mmrl.diffusion.samplers import Denoise, sample_step
from mmrl.errors import ConfigError
from mmrl.store import write_json_atomic

PotentialFn = Callable[[torch.Tensor, "torch.Tensor | None", float], tuple[torch.Tensor, torch.Tensor]]
"""``(rewards [B, N], state [B, N] or None before the first scored step, λ) -> (log G [B, N], new state)``."""


# -- potentials -------------------------------------------------------------------------------------------------
def max_potential(rewards: torch.Tensor, prev: torch.Tensor | None, lmbda: float):
    """MAX: ``log G_t = λ·max(r_t, r_prev)``, ``r_prev`` the running max of earlier rewards (none before the first
    scored step: ``λ·r_t``); the new state is ``max(r_t, r_prev)``."""
    best = rewards if prev is None else torch.maximum(rewards, prev)
    return lmbda * best, best


def add_potential(rewards: torch.Tensor, prev: torch.Tensor | None, lmbda: float):
    """ADD: ``log G_t = λ·Σ_{s≤t} r_s`` over the particle's scored steps; the state is the running sum (0 before
    the first scored step)."""
    total = rewards if prev is None else rewards + prev
    return lmbda * total, total


def diff_potential(rewards: torch.Tensor, prev: torch.Tensor | None, lmbda: float):
    """DIFF: ``log G_t = λ·(r_t − r_prev)``, ``r_prev`` the previous scored reward (0 before the first, as the
    reference's ``reward_min_value``); the state is ``r_t``. The product over a path telescopes to exp(λ·r_T)."""
    before = torch.zeros_like(rewards) if prev is None else prev
    return lmbda * (rewards - before), rewards


def rt_potential(rewards: torch.Tensor, prev: torch.Tensor | None, lmbda: float):
    """RT: ``log G_t = λ·r_t`` (the current reward only); the state is ``r_t``."""
    return lmbda * rewards, rewards


@dataclass(frozen=True)
class Potential:
    """A potential's log-form function and whether its product over a path already is the target tilt
    (``telescopes``: DIFF), so the final step needs no division by the earlier potentials."""

    name: str
    fn: PotentialFn
    telescopes: bool = False


POTENTIALS = {p.name: p for p in (Potential("max", max_potential), Potential("add", add_potential),
                                  Potential("diff", diff_potential, telescopes=True),
                                  Potential("rt", rt_potential))}
"""The FK potentials by name."""


def get_potential(name: str) -> Potential:
    """The potential ``name``; ``ConfigError`` listing the valid ones for an unknown name."""
    if name not in POTENTIALS:
        raise ConfigError(f"unknown FK potential {name!r}; valid: {', '.join(sorted(POTENTIALS))}")
    return POTENTIALS[name]


def final_log_potential(potential: Potential, log_g: torch.Tensor, log_g_before: torch.Tensor) -> torch.Tensor:
    """The final step's log-weight increment: ``log G_T − Σ_{s<T} log G_s`` (``log_g_before``, summed along each
    particle's ancestry), or ``log G_T`` for a telescoping potential (DIFF), as the reference divides by its
    ``product_of_potentials`` for MAX, ADD and RT only."""
    return log_g if potential.telescopes else log_g - log_g_before


# -- weights, ESS, resampling -----------------------------------------------------------------------------------
def normalized_weights(log_w: torch.Tensor) -> torch.Tensor:
    """Self-normalised weights ``w_i = exp(log w_i) / Σ_j exp(log w_j)`` over the last dimension (a softmax:
    stable for any scale). A NaN log-weight counts as −∞ (weight 0; the reference zeroes NaN weights); a row
    whose log-weights are all −∞ gets uniform weights."""
    log_w = torch.nan_to_num(log_w.float(), nan=float("-inf"), posinf=1e30)
    dead = torch.isneginf(log_w).all(dim=-1, keepdim=True)
    return torch.softmax(torch.where(dead, torch.zeros_like(log_w), log_w), dim=-1)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """``ESS = 1 / Σ_i w_i²`` of the normalised weights (N for equal weights, 1 when one particle has them all)."""
    return 1.0 / normalized_weights(log_w).pow(2).sum(dim=-1)


def multinomial_resample(log_w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestor indices ``[B, N]``: for each row of ``log_w`` ``[B, N]``, N draws with replacement from
    ``Categorical(normalized_weights)``."""
    weights = normalized_weights(log_w)
    return torch.multinomial(weights, weights.shape[-1], replacement=True, generator=generator)


def resample_mask(log_w: torch.Tensor, adaptive: bool) -> torch.Tensor:
    """Which rows resample at a scored step: all of them, or (``adaptive``) those with ESS < N/2."""
    if not adaptive:
        return torch.ones(log_w.shape[0], dtype=torch.bool)
    return effective_sample_size(log_w) < log_w.shape[-1] / 2


def resampling_steps(steps: int, every: int = 1, start: int = 0, end: int | None = None) -> list[int]:
    """The scored (potential-evaluating, resampling) steps before the last: ``start, start+every, ... ≤ end``
    (``end`` inclusive, as the reference's ``arange(start, end + 1, every)``; None: the last step). The last step
    ``steps − 1`` is always scored, by the final potential, and is not listed."""
    if steps < 1 or every < 1 or start < 0 or (end is not None and end < start):
        raise ConfigError(f"invalid FK schedule: steps={steps}, every={every}, start={start}, end={end} (need steps "
                          ">= 1, every >= 1, start >= 0, end >= start)")
    last = steps - 1 if end is None else min(end, steps - 1)
    return [i for i in range(start, last + 1, every) if i < steps - 1]


# -- the particle loop ------------------------------------------------------------------------------------------
@dataclass
class ParticleResult:
    """Final particles of ``B`` images × ``N`` particles (rows grouped by image)."""

    latents: torch.Tensor
    """``[B·N, ...]`` final latents."""
    rewards: torch.Tensor
    """``[B, N]`` reward of each final particle."""
    log_weights: torch.Tensor
    """``[B, N]`` final log-weights (with the final potential; unnormalised)."""
    denoiser_calls: int
    """Denoiser evaluations, counted per latent row (N·steps per image)."""
    history: list[dict] = field(default_factory=list)
    """One ``{"step", "ess", "resampled"}`` per scored step before the last (per image lists)."""

    @property
    def best(self) -> torch.Tensor:
        """``[B]`` index of each image's highest-reward particle."""
        return self.rewards.argmax(dim=1)

    def best_latents(self) -> torch.Tensor:
        n = self.rewards.shape[1]
        return self.latents[torch.arange(len(self.best)) * n + self.best]


def _rows(index: torch.Tensor) -> torch.Tensor:
    """Flat row indices of per-image ancestor indices ``[B, N]``."""
    b, n = index.shape
    return (torch.arange(b)[:, None] * n + index).reshape(-1)


def fk_sample(denoise: Denoise, sampler, latents: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor], *,
              particles: int, potential: str = "max", lmbda: float = 10.0, schedule: Sequence[int] = (),
              adaptive: bool = False, generator: torch.Generator | None = None,
              resample_generator: torch.Generator | None = None, eta: float | None = None) -> ParticleResult:
    """Run every step of ``sampler`` on ``latents`` ``[B·N, ...]`` (N = ``particles`` consecutive rows per image),
    scoring x̂0 with ``score(latents) -> [B·N]`` after each step in ``schedule`` (``resampling_steps``) and
    resampling each image's particles there (all, or when ``adaptive`` those with ESS < N/2); the last step's
    output is scored for the final potential (module docstring). An empty ``schedule`` is best-of-N."""
    pot = get_potential(potential)
    if particles < 1 or len(latents) % particles:
        raise ConfigError(f"particles={particles}: need >= 1 and dividing the {len(latents)} latent rows")
    b, n, steps = len(latents) // particles, particles, len(sampler.timesteps)
    scored, state = set(schedule), None
    log_w, log_g_sum = torch.zeros(b, n), torch.zeros(b, n)
    x, calls, history = latents, 0, []
    for i in range(steps):
        step = sample_step(denoise, sampler, i, x, generator, eta)
        x, calls = step.prev_sample, calls + len(x)
        if i not in scored or i == steps - 1:
            continue
        log_g, state = pot.fn(_grouped(score(step.pred_original_sample), b, n), state, lmbda)
        log_w, log_g_sum = log_w + log_g, log_g_sum + log_g
        resample = resample_mask(log_w, adaptive)
        history.append({"step": i, "ess": effective_sample_size(log_w).tolist(), "resampled": resample.tolist()})
        drawn = multinomial_resample(log_w, resample_generator)
        index = torch.where(resample[:, None], drawn, torch.arange(n).expand(b, n))
        x = x[_rows(index).to(x.device)]
        state, log_g_sum = state.gather(1, index), log_g_sum.gather(1, index)
        log_w = torch.where(resample[:, None], torch.zeros_like(log_w), log_w.gather(1, index))
    rewards = _grouped(score(x), b, n)
    log_g, _ = pot.fn(rewards, state, lmbda)
    log_w = log_w + final_log_potential(pot, log_g, log_g_sum)
    return ParticleResult(x, rewards, log_w, calls, history)


def _grouped(rewards: torch.Tensor, b: int, n: int) -> torch.Tensor:
    rewards = torch.as_tensor(rewards).detach().float().cpu()
    if rewards.shape != (b * n,):
        raise ValueError(f"the reward returned shape {tuple(rewards.shape)}, expected ({b * n},)")
    return rewards.reshape(b, n)


# -- pipelines --------------------------------------------------------------------------------------------------
DEFAULT_STOCHASTICITY = {"sd": 1.0, "sd3": 0.7}
"""Sampler stochasticity when ``SteerConfig.stochasticity`` is None: DDIM η = 1 (the reference's default), the
flow SDE's noise level 0.7 (Flow-GRPO's)."""

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]


def check_steer_config(cfg: SteerConfig, key: str = "steer") -> None:
    """``ConfigError`` naming the key of a value outside its range (an unknown potential lists the valid ones)."""
    if cfg.particles < 1:
        raise ConfigError(f"config key '{key}.particles': {cfg.particles} must be >= 1")
    try:
        get_potential(cfg.potential)
    except ConfigError as error:
        raise ConfigError(f"config key '{key}.potential': {error}") from None
    if cfg.steps < 1:
        raise ConfigError(f"config key '{key}.steps': {cfg.steps} must be >= 1")
    if cfg.stochasticity is not None and cfg.stochasticity < 0:
        raise ConfigError(f"config key '{key}.stochasticity': {cfg.stochasticity} must be >= 0")
    if cfg.resample_every < 1:
        raise ConfigError(f"config key '{key}.resample_every': {cfg.resample_every} must be >= 1")
    if cfg.resample_start < 0:
        raise ConfigError(f"config key '{key}.resample_start': {cfg.resample_start} must be >= 0")
    if cfg.resample_end is not None and cfg.resample_end < cfg.resample_start:
        raise ConfigError(f"config key '{key}.resample_end': {cfg.resample_end} is before resample_start "
                          f"{cfg.resample_start}")


def make_steer_reward(specs: Sequence[RewardSpec]) -> RewardFn:
    """``reward(images, prompts) -> [B]``: the weighted sum of ``specs`` (``WeightedImageReward``; an unknown
    reward or argument is a ``ConfigError`` listing the valid ones)."""
    from mmrl.diffusion.image_rewards import WeightedImageReward

    weighted = WeightedImageReward([(s.name, s.weight, s.args) for s in specs])

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return weighted(images, prompts)[0]

    reward.name = weighted.name
    return reward


@dataclass
class Steered:
    """Images of a batch of prompts: the chosen particle of each, its reward, and the particle run."""

    images: torch.Tensor
    rewards: torch.Tensor
    particles: ParticleResult


@torch.no_grad()
def steer_images(policy, prompts: list[str], reward: RewardFn, cfg: SteerConfig, resolution: int,
                 generator: torch.Generator, resample_generator: torch.Generator | None = None,
                 steer: bool = True) -> Steered:
    """One image per prompt with ``cfg.particles`` particles each: FK steering (``steer``) or best-of-N
    (``steer=False``: no scored steps before the last). Same ``generator`` state -> same starting noise and SDE
    noise for both, so the baseline runs on the very seeds FK starts from."""
    check_steer_config(cfg)
    n = cfg.particles
    rows = [p for p in prompts for _ in range(n)]
    a = DEFAULT_STOCHASTICITY[policy.kind] if cfg.stochasticity is None else cfg.stochasticity
    sampler = policy.sampler(cfg.steps, a)
    denoise = policy.denoiser_fn(policy.encode(prompts).repeat(n), cfg.guidance_scale)
    noise = policy.noise(len(rows), resolution, generator)
    schedule = (resampling_steps(cfg.steps, cfg.resample_every, cfg.resample_start, cfg.resample_end)
                if steer else [])
    result = fk_sample(denoise, sampler, noise, lambda z: reward(policy.decode(z), rows), particles=n,
                       potential=cfg.potential, lmbda=cfg.lmbda, schedule=schedule, adaptive=cfg.adaptive,
                       generator=generator, resample_generator=resample_generator)
    best = result.best
    return Steered(policy.decode(result.best_latents()), result.rewards[torch.arange(len(best)), best], result)


METHODS = {"fk": True, "best_of_n": False}
"""What ``write_steered`` runs: FK steering, and best-of-N (the baseline) when asked; name -> ``steer`` flag."""


def write_steered(policy, records: list[dict], reward: RewardFn, cfg: SteerConfig, out: str | Path, resolution: int,
                  per_prompt: int = 1, seed: int = 0, baseline: str | None = None, progress: bool = True) -> dict:
    """``per_prompt`` FK-steered images for each record ``{"prompt": ...}`` in GenEval's layout under ``out``
    (``mmrl.diffusion.sample.prompt_folder``), with ``baseline="best_of_n"`` the best-of-N images of the same seeds
    under ``out/best_of_n/``, and ``out/summary.json``: per method the mean final reward over all images, the
    per-prompt rewards, the denoiser calls (equal for both: N·steps per image) and ``resampling_events`` (how
    many (image, scored step) pairs resampled; 0 for best-of-N). Each method draws from its own generators seeded
    with ``seed`` (noise) and ``seed + 1`` (resampling), so prompt k starts from the same noise under both. Returns
    the summary."""
    from mmrl.diffusion.artifacts import to_png
    from mmrl.diffusion.sample import prompt_folder

    if baseline not in (None, "best_of_n"):
        raise ConfigError(f"unknown steering baseline {baseline!r}; valid: best_of_n")
    check_steer_config(cfg)
    out = Path(out)
    methods = {"fk": out, **({"best_of_n": out / "best_of_n"} if baseline else {})}
    gens = {m: (torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)) for m in methods}
    totals = {m: {"rewards": [], "denoiser_calls": 0, "resampling_events": 0} for m in methods}
    for index, record in enumerate(tqdm(records, desc="FK steering", disable=not progress)):
        for method, root in methods.items():
            result = steer_images(policy, [record["prompt"]] * per_prompt, reward, cfg, resolution, *gens[method],
                                  steer=METHODS[method])
            folder = prompt_folder(root, index, record)
            for k, image in enumerate(result.images):
                to_png(image, folder / "samples" / f"{k:04d}.png")
            total = totals[method]
            total["rewards"].append([float(r) for r in result.rewards])
            total["denoiser_calls"] += result.particles.denoiser_calls
            total["resampling_events"] += sum(sum(h["resampled"]) for h in result.particles.history)
    summary = {"particles": cfg.particles, "potential": cfg.potential, "lambda": cfg.lmbda, "steps": cfg.steps,
               "adaptive": cfg.adaptive, "scored_steps": resampling_steps(cfg.steps, cfg.resample_every,
                                                                          cfg.resample_start, cfg.resample_end),
               "reward": getattr(reward, "name", None), "prompts": len(records), "images_per_prompt": per_prompt,
               "seed": seed}
    for method, total in totals.items():
        flat = [r for rows in total["rewards"] for r in rows]
        summary[method] = {"mean_reward": sum(flat) / len(flat), **total}
    write_json_atomic(out / "summary.json", summary)
    return summary
