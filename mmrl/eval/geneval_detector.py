"""GenEval's reference detector in process: ``mask2former`` in ``mmrl.plugins.GENEVAL_DETECTORS``.

The official ``evaluation/evaluate_images.py`` (djghosh13/geneval) runs mmdet 2.x's Mask2Former (Swin-S, COCO
instance segmentation, ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``) and classifies colours with zero-shot
CLIP (clip_benchmark 1.4's ``zero_shot_classifier`` / ``run_classification`` over open_clip's OpenAI ViT-L/14).
Here the same two models run through transformers and open_clip:

* **Objects** (``Mask2FormerDetector.detect``): ``Mask2FormerForUniversalSegmentation`` on a prompt's images in
  one batch, then ``Mask2FormerImageProcessor.post_process_instance_segmentation`` with no score threshold, so
  every instance comes back with its binary mask, label and score (score = class probability x mean mask
  probability inside the mask, as mmdet's ``instance_postprocess``); the 100 most confident are kept (mmdet's
  ``max_per_image``). The box is the mask's extent ``[x_first, y_first, x_last + 1, y_last + 1]`` (``mask_boxes``,
  mmdet's ``mask2bbox``). Class names come from the checkpoint's ``id2label``, mapped to GenEval's 80 object names
  (``geneval_names``: identical names pass, a few COCO spellings are translated, anything else is an error).
* **Colours** (``classify_colours``), only for the objects ``judge`` reads: per image, ``kept_detections`` with the
  image's tag, then the ``count`` most confident objects of each include clause that has a ``color``. Each is
  cut out as the official ``ImageCrops`` does (``masked_crop``: the image with the pixels outside the object's mask
  painted #999999, cropped to its box; no padding to a square) and goes through open_clip's evaluation transform
  (resize the shortest side, centre crop). The classifier per object name is clip_benchmark's: for each of the
  ten ``COLOURS``, the three ``COLOUR_TEMPLATES`` are encoded, each embedding L2-normalised, averaged and
  normalised again (``colour_classifier``); the colour is the argmax of the normalised image embedding against
  them (``pick_colours``). Fp16 autocast on CUDA, as clip_benchmark's default ``amp=True``.

Departures from the official pipeline, from transformers' Mask2Former: the checkpoint's image processor sets the
input size (transformers' COCO checkpoints resize to 384 px, mmdet's test pipeline to 800 px), and the post-
processing binarises the mask logits at 384 x 384 before a nearest upsampling to the image (mmdet upsamples the
logits bilinearly to the image first), so masks and boxes are coarser; instances whose mask is empty at the
image's size are dropped (mmdet keeps empty ones with a zero box and a zero score, which no threshold keeps). Any
padding the processor adds is cropped off the mask logits before post-processing (``post_process_instance_segmentation``
assumes none).

Checkpoints: ``path`` is a Hugging Face id or a local folder holding the model and its image processor
(``save_pretrained``); ``clip_model`` an open_clip architecture or a JSON model config, ``clip_pretrained`` an
open_clip tag or a weights file. Without the internet, both must be local files.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmrl.errors import ConfigError
from mmrl.eval.geneval import COLOURS, Detection, kept_detections
from mmrl.plugins import GENEVAL_DETECTORS

GENEVAL_OBJECTS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "computer mouse", "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
"""GenEval's 80 object names (its ``object_names.txt``: the COCO things, in COCO's order, three of them renamed)."""

LABEL_ALIASES = {
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",  # COCO's own names
    "motorbike": "motorcycle", "aeroplane": "airplane", "diningtable": "dining table", "sofa": "couch",
    "pottedplant": "potted plant", "tvmonitor": "tv", "tv monitor": "tv", "hair dryer": "hair drier",
}
"""Checkpoint label spellings (after ``normalize_label``) that name a GenEval object differently."""

COLOUR_TEMPLATES = ("a photo of a {c} {object}", "a photo of a {c}-colored {object}", "a photo of a {c} object")
"""The official colour prompts; ``{c}`` is a colour and ``{object}`` the object's GenEval name."""
BACKGROUND = (153, 153, 153)
"""#999999: the official ``bgcolor`` painted outside an object's mask before its colour is classified."""
MAX_DETECTIONS = 100
"""Instances kept per image, the most confident (mmdet's ``max_per_image``)."""
DEFAULT_CHECKPOINT = "facebook/mask2former-swin-small-coco-instance"
"""transformers' port of the Swin-S COCO instance-segmentation Mask2Former (GenEval's detector)."""


# ---------------------------------------------------------------------------------------------------- labels

def normalize_label(label: str) -> str:
    """``label`` lower-cased, ``_`` and ``-`` as spaces, runs of spaces collapsed: ``"Dining_Table"`` ->
    ``"dining table"``."""
    return " ".join(re.sub(r"[_-]", " ", label.lower()).split())


def geneval_names(id2label: dict[Any, str]) -> dict[int, str]:
    """``{label id: GenEval object name}`` of a checkpoint's ``id2label``: a label that is a GenEval name after
    ``normalize_label`` keeps it, one in ``LABEL_ALIASES`` is translated (``"mouse"`` -> ``"computer mouse"``).
    ``ConfigError`` listing every other label (a panoptic checkpoint's stuff classes, another dataset's names)."""
    names, unmapped = {}, []
    for key, label in sorted(id2label.items(), key=lambda kv: int(kv[0])):
        norm = normalize_label(str(label))
        name = norm if norm in GENEVAL_OBJECTS else LABEL_ALIASES.get(norm)
        if name is None:
            unmapped.append(f"{key}: {label!r}")
        else:
            names[int(key)] = name
    if unmapped:
        raise ConfigError(f"GenEval detector mask2former: {len(unmapped)} label(s) of the checkpoint are not GenEval "
                          f"object names ({', '.join(unmapped[:8])}{', ...' if len(unmapped) > 8 else ''}); it needs "
                          "a COCO instance-segmentation checkpoint whose id2label holds GenEval's 80 objects")
    return names


# ---------------------------------------------------------------------------------------------------- masks

def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Float boxes ``[N, 4]`` ``[x_first, y_first, x_last + 1, y_last + 1]`` (pixels) of boolean masks ``[N, H,
    W]``, zeros for an empty mask: mmdet's ``mask2bbox``, the boxes of GenEval's Mask2Former."""
    n, h, w = masks.shape
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # [N, W], [N, H]
    filled = cols.any(dim=1)
    first = lambda hits: hits.to(torch.uint8).argmax(dim=1)  # noqa: E731  (index of the first True)
    last = lambda hits: hits.shape[1] - 1 - first(hits.flip(1))  # noqa: E731
    found = torch.stack([first(cols), first(rows), last(cols) + 1, last(rows) + 1], dim=1).float()
    boxes[filled] = found[filled]
    return boxes


def unpadded_size(pixel_mask: torch.Tensor, mask_size: tuple[int, int]) -> tuple[int, int]:
    """The part ``(h, w)`` of mask logits of size ``mask_size`` that covers the image, not the padding, given the
    processor's ``pixel_mask`` ``[H_in, W_in]`` (1 on the image, top-left, 0 on the padding): the image's share of
    each side, rounded up."""
    in_h, in_w = pixel_mask.shape
    rows, cols = int(pixel_mask.any(dim=1).sum()), int(pixel_mask.any(dim=0).sum())
    return max(1, -(-rows * mask_size[0] // in_h)), max(1, -(-cols * mask_size[1] // in_w))


def masked_crop(image: Image.Image, mask: np.ndarray, box: list[float]) -> Image.Image:
    """What the official ``ImageCrops`` hands CLIP: ``image`` (RGB) where ``mask`` (bool ``[H, W]``) is set and
    ``BACKGROUND`` elsewhere, cropped to ``box`` ``[x1, y1, x2, y2]`` (PIL's crop: x2, y2 exclusive)."""
    if tuple(mask.shape) != (image.height, image.width):
        raise ValueError(f"mask of shape {tuple(mask.shape)} for an image of {image.height}x{image.width}")
    background = Image.new("RGB", image.size, BACKGROUND)
    painted = Image.composite(image.convert("RGB"), background, Image.fromarray(mask.astype(bool)))
    return painted.crop(tuple(box))


# ---------------------------------------------------------------------------------------------------- colours

def colour_prompts(name: str) -> list[str]:
    """The ``len(COLOURS) * len(COLOUR_TEMPLATES)`` prompts for object ``name``, colour-major."""
    return [template.format(c=colour, object=name) for colour in COLOURS for template in COLOUR_TEMPLATES]


def colour_classifier(text_embeds: torch.Tensor) -> torch.Tensor:
    """Class embeddings ``[C, D]`` from the prompt embeddings ``[C, T, D]`` (C colours x T templates):
    ``normalize(mean_t(normalize(e_ct)))``, clip_benchmark's ``zero_shot_classifier``."""
    mean = torch.nn.functional.normalize(text_embeds.float(), dim=-1).mean(dim=1)
    return torch.nn.functional.normalize(mean, dim=-1)


def pick_colours(image_embeds: torch.Tensor, classifier: torch.Tensor) -> list[str]:
    """The colour (``COLOURS[argmax]``) of each image embedding ``[N, D]``: argmax over the colours of
    ``normalize(image) . classifier_c`` (clip_benchmark's ``run_classification``; its 100x scale does not change
    the argmax). ``classifier`` is ``colour_classifier``'s ``[len(COLOURS), D]``."""
    image = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    return [COLOURS[i] for i in (image @ classifier.float().T).argmax(dim=1).tolist()]


def colour_targets(metadata: dict[str, Any], detections: list[Detection]) -> list[Detection]:
    """The detections whose colour ``judge`` reads for ``metadata``: for each include clause with a ``color``, the
    ``count`` most confident of its class among ``kept_detections``, when there are that many (else the clause fails
    on the count and no colour is read); each object once, in that order."""
    kept = kept_detections(detections, metadata["tag"])
    targets: dict[int, Detection] = {}
    for clause in metadata.get("include", []):
        found = kept.get(clause["class"], [])[:clause["count"]]
        if "color" in clause and len(found) == clause["count"]:
            for det in found:
                targets.setdefault(id(det), det)
    return list(targets.values())


# ---------------------------------------------------------------------------------------------------- detector

def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Mask2FormerDetector:
    """GenEval's detector: Mask2Former instances (``path``) and CLIP colours (``clip_model``, ``clip_pretrained``)
    on ``device`` (default CUDA when available); see the module docstring."""

    def __init__(self, *, path: str = DEFAULT_CHECKPOINT, clip_model: str = "ViT-L-14-quickgelu",
                 clip_pretrained: str | None = "openai", device: str | None = None):
        from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

        self.device = torch.device(device or _default_device())
        try:
            self.processor = Mask2FormerImageProcessor.from_pretrained(path)
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(path).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"detector.path={path!r}: cannot load a Mask2Former checkpoint and its image processor "
                              f"({' '.join(str(exc).split())[:300]}); without the internet, pass a local folder "
                              "written by save_pretrained") from exc
        self.names = geneval_names(self.model.config.id2label)
        self._load_clip(clip_model, clip_pretrained)
        self._classifiers: dict[str, torch.Tensor] = {}

    def _load_clip(self, clip_model: str, clip_pretrained: str | None) -> None:
        import open_clip

        arch = clip_model
        if clip_model.endswith(".json"):
            if not Path(clip_model).is_file():
                raise ConfigError(f"detector.clip_model={clip_model!r}: no such open_clip model config")
            open_clip.add_model_config(clip_model)
            arch = Path(clip_model).stem
        if arch not in open_clip.list_models():
            raise ConfigError(f"detector.clip_model={clip_model!r}: neither an open_clip architecture "
                              "(open_clip.list_models()) nor a JSON model config file")
        if clip_pretrained is None:
            warnings.warn(f"GenEval detector mask2former: clip_pretrained is null, so {arch} is randomly initialised "
                          "and its colours are meaningless", stacklevel=3)
        try:
            model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=clip_pretrained,
                                                                        device=self.device)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"detector.clip_pretrained={clip_pretrained!r}: cannot build {arch} with it "
                              f"({' '.join(str(exc).split())[:300]}); without the internet, pass a weights "
                              "file") from exc
        self.clip, self.clip_transform = model.eval(), transform
        self.tokenizer = open_clip.get_tokenizer(arch)

    # -- objects --------------------------------------------------------------------------------------------
    def instances(self, images: list[Image.Image]) -> list[tuple[list[Detection], torch.Tensor]]:
        """Per image: every instance as a detection with ``color`` None, most confident first (at most
        ``MAX_DETECTIONS``), and their boolean masks ``[K, H, W]`` (on the CPU)."""
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device)
        pixel_mask = inputs.get("pixel_mask")
        with torch.inference_mode():
            out = self.model(pixel_values=pixels, pixel_mask=None if pixel_mask is None else pixel_mask.to(self.device))
        mask_size = tuple(out.masks_queries_logits.shape[-2:])
        results = []
        for i, image in enumerate(images):
            # drop the padding (the post-processing maps the whole mask onto the image), and post-process on the
            # CPU (it writes a CPU segmentation map through the masks); the kept masks are resized on the device
            crop_h, crop_w = mask_size if pixel_mask is None else unpadded_size(pixel_mask[i], mask_size)
            masks = out.masks_queries_logits[i:i + 1, :, :crop_h, :crop_w]
            one = SimpleNamespace(class_queries_logits=out.class_queries_logits[i:i + 1].float().cpu(),
                                  masks_queries_logits=masks.float().cpu())
            result = self.processor.post_process_instance_segmentation(one, threshold=0.0, return_binary_maps=True)[0]
            results.append(self._detections(result, (image.height, image.width)))
        return results

    def _detections(self, result: dict[str, Any], size: tuple[int, int]) -> tuple[list[Detection], torch.Tensor]:
        """The detections and masks (upsampled to ``size`` as the post-processing's ``target_sizes`` would: nearest)
        of one post-processed image; instances whose mask is empty at that size are dropped."""
        segments = result["segments_info"]
        order = sorted(range(len(segments)), key=lambda j: segments[j]["score"], reverse=True)[:MAX_DETECTIONS]
        if not order:
            return [], torch.zeros(0, *size, dtype=torch.bool)
        small = result["segmentation"][order].to(self.device, torch.float32)
        masks = torch.nn.functional.interpolate(small[None], size=size, mode="nearest")[0].bool()
        filled = masks.flatten(1).any(dim=1).tolist()
        order = [j for j, keep in zip(order, filled) if keep]
        masks = masks[torch.tensor(filled, device=masks.device)]
        boxes = mask_boxes(masks).tolist()
        dets = [{"class": self.names[segments[j]["label_id"]], "box": box, "score": float(segments[j]["score"]),
                 "color": None} for j, box in zip(order, boxes)]
        return dets, masks.cpu()

    # -- colours --------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda")

    def classifier(self, name: str) -> torch.Tensor:
        """The colour classifier ``[len(COLOURS), D]`` of object ``name`` (built once per name, as the official)."""
        if name not in self._classifiers:
            tokens = self.tokenizer(colour_prompts(name)).to(self.device)
            with torch.inference_mode(), self._autocast():
                embeds = self.clip.encode_text(tokens)
            self._classifiers[name] = colour_classifier(embeds.float().view(len(COLOURS), len(COLOUR_TEMPLATES), -1))
        return self._classifiers[name]

    def classify_colours(self, image: Image.Image, dets: list[Detection], masks: list[np.ndarray]) -> list[str]:
        """The colour of each of ``dets`` (one object name) from its masked crop of ``image``."""
        crops = torch.stack([self.clip_transform(masked_crop(image, mask, det["box"]))
                             for det, mask in zip(dets, masks)])
        with torch.inference_mode(), self._autocast():
            embeds = self.clip.encode_image(crops.to(self.device))
        return pick_colours(embeds, self.classifier(dets[0]["class"]))

    # -- the Detector protocol ------------------------------------------------------------------------------
    def detect(self, images: list[Image.Image], metadata: list[dict[str, Any]]) -> list[list[Detection]]:
        """Every instance of each image (``instances``), with ``color`` set on the objects ``judge`` reads for the
        image's metadata (``colour_targets``) and None on the others."""
        found = []
        for image, meta, (dets, masks) in zip(images, metadata, self.instances(images)):
            index = {id(det): k for k, det in enumerate(dets)}
            by_class: dict[str, list[Detection]] = {}
            for det in colour_targets(meta, dets):
                by_class.setdefault(det["class"], []).append(det)
            for group in by_class.values():
                group_masks = [masks[index[id(det)]].numpy() for det in group]
                for det, colour in zip(group, self.classify_colours(image, group, group_masks)):
                    det["color"] = colour
            found.append(dets)
        return found

    def close(self) -> None:
        """Free the models."""
        self.model = self.clip = None
        self._classifiers.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


GENEVAL_DETECTORS.register("mask2former", Mask2FormerDetector)
