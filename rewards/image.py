"""Image rewards for the diffusion RL branch (DDPO, AlignProp, Flow-GRPO, AWM), batched and lazily loaded.

An ``ImageReward`` maps ``images`` ``[B, 3, H, W]`` in ``[0, 1]`` (any device or dtype) and ``prompts`` to a
float32 ``[B]`` tensor on the images' device. Pixels are untrusted model output: ``sanitize`` maps NaN to 0 and
clamps to ``[0, 1]`` (±inf → 1 / 0); nothing raises on pixel values. A ``differentiable`` reward keeps the
graph back to ``images`` (AlignProp backpropagates through it; the frozen scorer gets no gradient); the others
run under ``no_grad``. Model-based rewards load on the first call (``.loaded``), on ``device`` or else the
images' device; nothing loads at import or construction.

* ``jpeg_compressibility`` / ``jpeg_incompressibility`` (DDPO, Black et al. 2023): quantise ``round(255·x)``
  to uint8, encode with PIL as JPEG ``quality`` 95; reward ``−bytes/1000`` / ``+bytes/1000`` (kB, as
  ddpo-pytorch). Not differentiable.
* ``color_target``: ``−mean_{c,h,w}((x − t_c)²)``, the squared distance to the RGB ``target`` per pixel
  divided by 3, averaged over pixels. A weight-free sanity reward.
* ``brightness``: mean luminance ``L = mean_{h,w}(0.299·R + 0.587·G + 0.114·B)`` (BT.601), or ``−(L − target)²``.
* ``clip_score`` (CLIPScore, Hessel et al. 2021) with open_clip: the raw cosine ``cos(E_img(x), E_txt(p))`` in
  ``[−1, 1]``. The paper reports ``2.5·max(cos, 0)``, libraries often ``100·max(cos, 0)``: rescalings that
  matter for reporting but not for RL (group advantages are scale-free, and ``max(·, 0)`` would zero the
  gradient of poorly aligned samples), so we keep the cosine; scale it with a ``WeightedImageReward`` weight.
* ``aesthetic``: the LAION "improved aesthetic predictor" (sac+logos+ava1-l14-linearMSE, used by DDPO and
  AlignProp): the L2-normalised CLIP ViT-L/14 image embedding through ``D→1024→Dropout(0.2)→128→Dropout(0.2)
  →64→Dropout(0.1)→16→1``, no activations (keys ``layers.{0,2,4,6,7}.*``). The public head expects OpenAI's
  ViT-L/14: ``arch="ViT-L-14-quickgelu", pretrained="openai"`` (or a file with those weights).
* ``pickscore`` (Kirstain et al. 2023, "Pick-a-Pic"): a Hugging Face ``CLIPModel`` fine-tuned on human
  preferences; ``exp(logit_scale)·cos(E_img, E_txt)`` as in the reference code (≈ 100·cos).

Preprocessing is in torch so gradients flow: resize the shortest side (bicubic, antialiased, clamped to
``[0, 1]`` as PIL's uint8 output is), centre-crop to the model's input size, normalise with its mean and std;
a plain resize for square images. This matches open_clip's and ``CLIPImageProcessor``'s PIL pipelines up to
uint8 rounding and PIL's bicubic kernel. An invalid argument raises ``RewardArgumentError`` (a ``ValueError``) at
construction; a weights path that is missing or does not fit raises it naming the path at the first call.

This package imports nothing of mmrl: ``mmrl.diffusion.image_rewards`` registers these rewards by name, checks
their arguments and turns ``RewardArgumentError`` into mmrl's ``ConfigError``.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class ImageReward(Protocol):
    name: str
    differentiable: bool

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


def sanitize(images: torch.Tensor) -> torch.Tensor:
    """``images`` as float32 in ``[0, 1]``: NaN → 0, then clamp (±inf → 1 / 0). Keeps the autograd graph, with
    gradient 1 on pixels exactly at 0 or 1 (``torch.clamp`` gives 0 there, and decoded images are often
    saturated) and 0 on pixels outside. A shape other than ``[B, 3, H, W]`` is a caller bug: ``ValueError``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    x = torch.nan_to_num(images.float(), nan=0.0)
    return torch.where((x >= 0) & (x <= 1), x, x.clamp(0.0, 1.0))


class RewardArgumentError(ValueError):
    """An argument of an image reward is invalid, or names weights that are missing or do not fit (raised at
    construction, or at the first call for what loads lazily); the message names the argument."""


def _invalid(arg: str, value: Any, expected: str) -> RewardArgumentError:
    return RewardArgumentError(f"argument {arg}={value!r} is invalid; expected {expected}")


def _check_prompts(reward: str, images: torch.Tensor, prompts: Sequence[str]) -> None:
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{reward}: got {images.shape[0]} images but {len(prompts)} prompts")


def jpeg_size(image: torch.Tensor, quality: int = 95) -> int:
    """Bytes of the PIL JPEG (``quality``) of one ``[3, H, W]`` image in ``[0, 1]`` quantised as ``round(255·x)``."""
    from PIL import Image

    array = (image.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.tell()


class JpegReward:
    """``sign·bytes/1000`` of each image's JPEG: sign −1 rewards compressibility, +1 incompressibility."""

    differentiable = False

    def __init__(self, name: str, sign: float, quality: int = 95):
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise _invalid("quality", quality, "an integer in 1..100")
        self.name, self.sign, self.quality = name, sign, quality

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            sizes = [jpeg_size(image, self.quality) for image in sanitize(images)]
        return torch.tensor(sizes, dtype=torch.float32, device=images.device) * (self.sign / 1000)


def jpeg_compressibility(*, quality: int = 95) -> JpegReward:
    return JpegReward("jpeg_compressibility", -1.0, quality)


def jpeg_incompressibility(*, quality: int = 95) -> JpegReward:
    return JpegReward("jpeg_incompressibility", 1.0, quality)


def _unit_float(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value <= 1.0


class ColorTarget:
    """``−mean((x − target)²)`` over channels and pixels; differentiable."""

    name, differentiable = "color_target", True

    def __init__(self, *, target: Sequence[float] = (1.0, 0.0, 0.0)):
        if isinstance(target, (str, bytes)) or not isinstance(target, Sequence) or len(target) != 3 \
                or not all(_unit_float(v) for v in target):
            raise _invalid("target", target, "a list of 3 floats in [0, 1] (R, G, B)")
        self.target = [float(v) for v in target]

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = sanitize(images)
        target = torch.tensor(self.target, device=x.device)[:, None, None]
        return -((x - target) ** 2).mean(dim=(1, 2, 3))


LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B."""


class Brightness:
    """Mean luminance ``L``, or ``−(L − target)²`` with a ``target``; differentiable."""

    name, differentiable = "brightness", True

    def __init__(self, *, target: float | None = None):
        if target is not None and not (_unit_float(target)):
            raise _invalid("target", target, "null or a float in [0, 1]")
        self.target = None if target is None else float(target)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = sanitize(images)
        luma = (x * torch.tensor(LUMA, device=x.device)[:, None, None]).sum(dim=1).mean(dim=(1, 2))
        return luma if self.target is None else -((luma - self.target) ** 2)


def resize_center_crop(images: torch.Tensor, shortest: int, crop: tuple[int, int]) -> torch.Tensor:
    """Resize so the shortest side is ``shortest`` (bicubic, antialiased, clamped to [0, 1]), then take the
    centre ``crop = (height, width)``. Differentiable; a no-op resize when the shortest side already fits."""
    h, w = images.shape[-2:]
    if min(h, w) != shortest:
        scale = shortest / min(h, w)
        size = (max(shortest, round(h * scale)), max(shortest, round(w * scale)))
        images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
        images = images.clamp(0.0, 1.0)
        h, w = size
    top, left = (h - crop[0]) // 2, (w - crop[1]) // 2
    return images[..., top:top + crop[0], left:left + crop[1]]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x − mean_c) / std_c`` per channel."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - mean_t) / std_t


def _unique_index(prompts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct prompts in first-seen order and, per prompt, its index among them (group rollouts repeat)."""
    unique = list(dict.fromkeys(prompts))
    position = {p: i for i, p in enumerate(unique)}
    return unique, torch.tensor([position[p] for p in prompts], dtype=torch.long)


def _missing_path(arg: str, path: Any) -> RewardArgumentError:
    return RewardArgumentError(f"{arg}={str(path)!r} does not exist")


class OpenClipTower:
    """A frozen open_clip model and tokenizer, built on first use, with differentiable image embeddings.

    ``pretrained`` is an open_clip tag of ``arch`` or a local weights file; ``None`` keeps the random
    initialisation (with a warning). ``config_file`` is an open_clip model config JSON registered with
    ``open_clip.add_model_config`` under its file stem, which then is the architecture name.
    """

    def __init__(self, reward: str, arch: str | None, default_arch: str, pretrained: str | None,
                 config_file: str | None, device: str | None):
        stem = None if config_file is None else Path(config_file).stem
        if arch is not None and stem is not None and arch != stem:
            raise _invalid("arch", arch, f"null or {stem!r} (the stem of config_file {config_file!r})")
        self.reward, self.pretrained, self.config_file, self.device = reward, pretrained, config_file, device
        self.arch = arch or stem or default_arch
        self.model: nn.Module | None = None
        self.tokenizer: Callable | None = None

    def load(self, device: torch.device) -> nn.Module:
        if self.model is None:
            import open_clip

            self._register_config(open_clip)
            self._check_pretrained(open_clip)
            try:
                model = open_clip.create_model(self.arch, pretrained=self.pretrained, device=self.device or device)
            except RuntimeError as err:  # a tag that cannot be downloaded, or a file that does not fit arch
                raise RewardArgumentError(f"cannot build {self.arch} with pretrained={self.pretrained!r}: "
                                          f"{err}") from err
            self.tokenizer = open_clip.get_tokenizer(self.arch)
            self.model = model.eval().requires_grad_(False)
        return self.model

    def _register_config(self, open_clip: Any) -> None:
        if self.config_file is not None:
            if not os.path.isfile(self.config_file):
                raise _missing_path("config_file", self.config_file)
            open_clip.add_model_config(self.config_file)
        if self.arch not in open_clip.list_models():
            raise _invalid("arch" if self.config_file is None else "config_file", self.config_file or self.arch,
                           "an open_clip architecture (open_clip.list_models()) or a JSON config with embed_dim, "
                           "vision_cfg and text_cfg")

    def _check_pretrained(self, open_clip: Any) -> None:
        if self.pretrained is None:
            warnings.warn(f"image reward {self.reward!r}: no pretrained weights, {self.arch} is randomly "
                          "initialised and its scores are meaningless", stacklevel=4)
        elif not os.path.isfile(self.pretrained):
            tags = open_clip.list_pretrained_tags_by_model(self.arch)
            if self.pretrained not in tags:
                raise RewardArgumentError(f"pretrained={self.pretrained!r} is neither an existing file nor an "
                                          f"open_clip tag of {self.arch} (tags: {tags})")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Sanitised images → the model's normalised input, as open_clip's eval transform does it."""
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
        pixels = resize_center_crop(images, max(size), tuple(size))
        return normalize(pixels, cfg["mean"], cfg["std"])

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, D]`` of ``images`` (any device), on the model's device."""
        model = self.load(images.device)
        device = next(model.parameters()).device
        return model.encode_image(self.preprocess(sanitize(images).to(device)), normalize=True)

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[B, D]``, each distinct prompt encoded once, without gradient."""
        device = next(self.model.parameters()).device
        unique, index = _unique_index(prompts)
        with torch.no_grad():
            embeds = self.model.encode_text(self.tokenizer(unique).to(device), normalize=True)
        return embeds[index.to(device)]


class ClipScore:
    """CLIPScore ``cos(E_img, E_txt)`` with open_clip; differentiable w.r.t. the images."""

    name, differentiable = "clip_score", True

    def __init__(self, *, arch: str | None = None, pretrained: str | None = None, config_file: str | None = None,
                 device: str | None = None):
        self.clip = OpenClipTower(self.name, arch, "ViT-B-32", pretrained, config_file, device)

    loaded = property(lambda self: self.clip.model is not None, doc="Whether the model is built.")

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        _check_prompts(self.name, images, prompts)
        image = self.clip.image_embeds(images)
        return (image * self.clip.text_embeds(prompts)).sum(dim=-1).to(images.device)


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head; ``layers.{0,2,4,6,7}`` match the public checkpoint."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


class Aesthetic:
    """``MLP(normalise(E_img(x)))`` with the LAION aesthetic head; differentiable w.r.t. the images."""

    name, differentiable = "aesthetic", True

    def __init__(self, *, arch: str | None = None, pretrained: str | None = None, config_file: str | None = None,
                 weights: str | None = None, device: str | None = None):
        self.clip = OpenClipTower(self.name, arch, "ViT-L-14", pretrained, config_file, device)
        self.weights = weights
        self.mlp: AestheticMLP | None = None

    loaded = property(lambda self: self.mlp is not None, doc="Whether the models are built.")

    def _load_mlp(self, device: torch.device) -> AestheticMLP:
        clip = self.clip.load(device)
        mlp = AestheticMLP(clip.visual.output_dim)
        if self.weights is None:
            warnings.warn(f"image reward {self.name!r}: no MLP weights, the head is random and its scores are "
                          "meaningless", stacklevel=3)
        elif not os.path.isfile(self.weights):
            raise _missing_path("weights", self.weights)
        else:
            try:
                mlp.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
            except RuntimeError as err:
                raise RewardArgumentError(f"weights={self.weights!r} do not fit the {clip.visual.output_dim}-d "
                                          f"embedding of {self.clip.arch}: {err}") from err
        return mlp.to(next(clip.parameters()).device).eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if self.mlp is None:
            self.mlp = self._load_mlp(images.device)
        return self.mlp(self.clip.image_embeds(images)).squeeze(-1).float().to(images.device)


class PickScore:
    """PickScore ``exp(logit_scale)·cos(E_img, E_txt)`` with a Hugging Face ``CLIPModel``; differentiable."""

    name, differentiable = "pickscore", True

    def __init__(self, *, path: str = "yuvalkirstain/PickScore_v1",
                 processor_path: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", device: str | None = None):
        self.path, self.processor_path, self.device = path, processor_path or path, device
        self.model: nn.Module | None = None

    loaded = property(lambda self: self.model is not None, doc="Whether the model is built.")

    def _from_pretrained(self, loader: Any, arg: str, path: str) -> Any:
        try:
            return loader.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise RewardArgumentError(f"cannot load {arg}={path!r} (not a local folder, and the Hugging Face Hub "
                                      f"did not provide it): {err}") from err

    def _load(self, device: torch.device) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        model = self._from_pretrained(CLIPModel, "path", self.path)
        self.tokenizer = self._from_pretrained(AutoTokenizer, "processor_path", self.processor_path)
        processor = self._from_pretrained(AutoImageProcessor, "processor_path", self.processor_path)
        crop = processor.crop_size if getattr(processor, "do_center_crop", True) else processor.size
        height, width = crop.get("height"), crop.get("width")
        self.crop = (height, width) if height else (crop.get("shortest_edge"),) * 2
        self.shortest = processor.size.get("shortest_edge") or max(self.crop)
        self.mean, self.std = processor.image_mean, processor.image_std
        self.model = model.to(self.device or device).eval().requires_grad_(False)

    def _image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        device = self.model.logit_scale.device
        pixels = normalize(resize_center_crop(sanitize(images).to(device), self.shortest, self.crop),
                           self.mean, self.std)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def _text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        device = self.model.logit_scale.device
        unique, index = _unique_index(prompts)
        tokens = self.tokenizer(unique, padding=True, truncation=True, return_tensors="pt",
                                max_length=self.model.config.text_config.max_position_embeddings).to(device)
        with torch.no_grad():
            pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                           attention_mask=tokens["attention_mask"]).pooler_output
            embeds = F.normalize(self.model.text_projection(pooled), dim=-1)
        return embeds[index.to(device)]

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        _check_prompts(self.name, images, prompts)
        if self.model is None:
            self._load(images.device)
        cos = (self._image_embeds(images) * self._text_embeds(prompts)).sum(dim=-1)
        return (self.model.logit_scale.exp() * cos).float().to(images.device)
