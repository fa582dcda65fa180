"""A brief denoising pre-training of a tiny pipeline, so that RL starts from a model of *some* image distribution.

A random denoiser is not a diffusion model of anything: sampled with 10 DDIM steps, the random tiny UNet's final
latents have std ≈ 10, far outside the noise scale it is evaluated at. Algorithms that read the sampler's own
log-probs (DDPO, Flow-GRPO) or differentiate through it (AlignProp) do not care, but AWM raises the likelihood of
good samples through the *pre-training loss*, which measures likelihood only for a model whose samples match
its denoising objective (measured: on the random tiny UNet AWM's gradient has cosine 0.02–0.06 with Flow-GRPO's
on the same batches and its reward does not rise; after this pre-training it does, docs/diffusion.md).

The data are synthetic, from a *world* (``PRETRAIN_WORLDS``, ``model.tiny_world``): ``fn(n, resolution,
generator) -> (images, prompts)``. The default, ``"discs"``, is made here: a disc of the prompt's colour on a flat
random background (``disc_images``), prompts ``"a {colour} {object}"`` (``PRETRAIN_PROMPTS``, which include the
tiny configs' prompts; the colours are those of ``mmrl.colours``), so the text conditioning means something.
``"mini_geneval"`` (``tasks.mini_geneval``) renders GenEval-style prompts about coloured shapes. Steps, on a
fixed seeded set of ``DATASET_SIZE`` images of the world:

0. optionally (``vae_steps > 0``) train the VAE as an autoencoder on them, so that decoded samples look like the
   world (a random VAE's decoder turns any latent into noise-like texture, which is enough for colour rewards
   but not for a detector that reads shapes): ``mean (D(z) − x)² + 1e-4·KL(q(z|x) ‖ N(0, I)) / (3·R²)`` (both
   terms per pixel value) with ``z`` sampled from the encoder's posterior, AdamW at lr 1e-3, as LDM trains its
   first stage without the perceptual and adversarial terms;
1. encode the images with the (now frozen) VAE and set the VAE's ``scaling_factor`` (and, for SD3-style VAEs,
   ``shift_factor``) so that the latents have mean 0 (SD3) and std 1, which is how SD chose its 0.18215:
   ``z = (E(x) − shift)·scale``;
2. train the denoiser with its own pre-training loss on those latents: ``x_t = renoise(z, ε, u)`` with
   ``u ~ U(0, 1)`` and ``mean (fθ(x_t, t, c) − target)²`` (ε for SD 1.x, the velocity ``ε − z`` for flow
   models), AdamW, gradient clipping at 1.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mmrl.colours import COLOURS
from mmrl.diffusion.losses import denoising_loss
from mmrl.plugins import PRETRAIN_WORLDS

PRETRAIN_COLOURS = ("red", "blue", "green", "yellow", "white", "black")
OBJECTS = ("apple", "car", "tree", "duck")
PRETRAIN_PROMPTS = [f"a {colour} {thing}" for colour in PRETRAIN_COLOURS for thing in OBJECTS]
DATASET_SIZE = 1024
"""Images in the fixed pre-training set (encoded once)."""
KL_WEIGHT = 1e-4
"""Weight of the KL term when the VAE is trained (step 0)."""


def disc_images(colours: torch.Tensor, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 3, R, R]`` images in [-1, 1]: a disc of colour ``colours[i]`` (RGB in [0, 1]) with radius 0.1–0.3 of
    the side, centred in the middle 60 %, on a flat background of a uniformly random colour."""
    n = len(colours)
    axis = torch.linspace(0, 1, resolution)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    background = torch.rand(n, 3, 1, 1, generator=generator)
    cx, cy = (torch.rand(n, 1, 1, generator=generator) * 0.6 + 0.2 for _ in range(2))
    radius = torch.rand(n, 1, 1, generator=generator) * 0.2 + 0.1
    disc = (((xx - cx) ** 2 + (yy - cy) ** 2) < radius**2).float().unsqueeze(1)
    images = background * (1 - disc) + colours.view(n, 3, 1, 1) * disc
    return images * 2 - 1


def prompt_colours(prompts: list[str]) -> torch.Tensor:
    """RGB in [0, 1] of the colour word in each of ``prompts`` (each must contain one of ``PRETRAIN_COLOURS``)."""
    rgb = []
    for prompt in prompts:
        words = [w for w in prompt.split() if w in PRETRAIN_COLOURS]
        if not words:
            raise ValueError(f"prompt {prompt!r} names none of the colours {', '.join(PRETRAIN_COLOURS)}")
        rgb.append(COLOURS[words[0]])
    return torch.tensor(rgb)


@PRETRAIN_WORLDS.register("discs")
def disc_world(n: int, resolution: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """``n`` prompts drawn uniformly from ``PRETRAIN_PROMPTS`` and their ``disc_images``."""
    index = torch.randint(len(PRETRAIN_PROMPTS), (n,), generator=generator)
    prompts = [PRETRAIN_PROMPTS[i] for i in index.tolist()]
    return disc_images(prompt_colours(prompts), resolution, generator), prompts


def fit_autoencoder(vae, images: torch.Tensor, steps: int, generator: torch.Generator, batch_size: int = 64,
                    lr: float = 1e-3, progress: bool = True) -> list[float]:
    """Train ``vae`` (in place, all weights) as an autoencoder of ``images`` for ``steps`` steps (step 0 of the
    module docstring); it is left frozen. Returns each step's reconstruction MSE."""

    def batch_loss() -> tuple[torch.Tensor, torch.Tensor]:
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        mse = (vae.decode(posterior.sample(generator)).sample - batch).pow(2).mean()
        return mse + KL_WEIGHT * posterior.kl().mean() / batch[0].numel(), mse

    return _fit(vae, batch_loss, steps, lr, "training the tiny VAE", progress)


def _fit(module: torch.nn.Module, batch_loss, steps: int, lr: float, desc: str, progress: bool) -> list[float]:
    """``steps`` AdamW steps at ``lr`` on every weight of ``module`` (float32), ``batch_loss() -> (loss, logged)``
    each, gradients clipped at norm 1; ``module`` is left frozen in eval mode. Returns the logged values."""
    module.float().requires_grad_(True).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr)
    logged = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        loss, value = batch_loss()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        logged.append(value.item())
    module.requires_grad_(False).eval()
    return logged


@torch.no_grad()
def fit_latent_scale(vae, images: torch.Tensor, shift: bool) -> torch.Tensor:
    """Set ``vae.config.scaling_factor`` to 1/std of the encoded ``images`` (and ``shift_factor`` to their mean
    when ``shift``) and return the latents normalised that way."""
    raw = vae.encode(images).latent_dist.mean
    offset = raw.mean().item() if shift else 0.0
    scale = 1.0 / (raw - offset).std().item()
    vae.register_to_config(scaling_factor=scale, **({"shift_factor": offset} if shift else {}))
    return (raw - offset) * scale


def pretrain_tiny(policy, resolution: int, steps: int, generator: torch.Generator, batch_size: int = 64,
                  lr: float = 1e-3, progress: bool = True, world: str = "discs", vae_steps: int = 0) -> list[float]:
    """Pre-train ``policy``'s denoiser for ``steps`` steps on ``world``'s images, after ``vae_steps`` steps of the
    VAE, as described in the module docstring (in place; the VAE's latent scale is set too). Returns the
    denoiser's loss of every step."""
    images, prompts = PRETRAIN_WORLDS.get(world)(DATASET_SIZE, resolution, generator)
    if vae_steps > 0:
        fit_autoencoder(policy.pipe.vae, images, vae_steps, generator, batch_size, progress=progress)
    latents = fit_latent_scale(policy.pipe.vae, images, shift=policy.kind == "sd3")
    distinct = list(dict.fromkeys(prompts))
    where = {prompt: i for i, prompt in enumerate(distinct)}
    cond = policy.encode(distinct)[torch.tensor([where[prompt] for prompt in prompts])]

    def batch_loss() -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(DATASET_SIZE, (batch_size,), generator=generator)
        noise = torch.randn(latents[rows].shape, generator=generator)
        x_t, t, target = policy.renoise(latents[rows], noise, torch.rand(batch_size, generator=generator))
        loss = denoising_loss(policy.denoiser_fn(cond[rows])(x_t, t), target).mean()
        return loss, loss

    return _fit(policy.denoiser, batch_loss, steps, lr, "pre-training the tiny denoiser", progress)
