"""The reference policy of KL penalties and regularisers, one rule for the VLM and the diffusion trainers.

Under LoRA the reference is the trained model itself with its adapters switched off (the base weights never
change, so no second copy is kept in memory); under full fine-tuning it is a frozen deep copy of the starting
model, made before the first update. A leaf module: it imports nothing of mmrl.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext


def frozen_reference(model, cfg, needs_reference: bool):
    """A frozen copy of the starting ``model`` when a reference is needed under full fine-tuning
    (``cfg.model.lora.enabled`` false, in the VLM and the diffusion configs alike); ``None`` otherwise (no
    reference needed, or LoRA, whose reference is the adapter-disabled model)."""
    if needs_reference and not cfg.model.lora.enabled:
        return copy.deepcopy(model).requires_grad_(False).eval()
    return None


def reference_context(model, ref_model):
    """``(reference, context)``: the frozen copy ``ref_model`` and a null context when there is one, else ``model``
    and a context in which its adapters are off."""
    if ref_model is not None:
        return ref_model, nullcontext()
    return model, adapters_disabled(model)


@contextmanager
def adapters_disabled(model):
    """Switch off every peft adapter layer of ``model`` inside the context (what peft's
    ``PeftModel.disable_adapter`` and diffusers' ``disable_adapters`` do for LoRA; this works on both, and through
    wrappers such as DDP). A model without adapters has no reference to fall back on: ``RuntimeError``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise RuntimeError("the model has no adapters to disable: keep a frozen_reference under full fine-tuning")
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
