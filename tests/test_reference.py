"""mmrl.reference: the reference policy of the VLM and diffusion trainers (frozen copy, or adapters disabled)."""
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from mmrl.reference import frozen_reference, reference_context


def config(lora: bool):
    return SimpleNamespace(model=SimpleNamespace(lora=SimpleNamespace(enabled=lora)))


def lora_model():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["0", "1"], init_lora_weights="gaussian"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # a trained adapter: the output differs from the base model's
    return model


def test_full_fine_tuning_keeps_a_frozen_copy_and_lora_none():
    model = torch.nn.Linear(3, 3)
    ref = frozen_reference(model, config(lora=False), needs_reference=True)
    assert ref is not model and not any(p.requires_grad for p in ref.parameters()) and not ref.training
    assert frozen_reference(model, config(lora=False), needs_reference=False) is None
    assert frozen_reference(model, config(lora=True), needs_reference=True) is None
    got, ctx = reference_context(model, ref)
    with ctx:
        assert got is ref


def test_lora_reference_is_the_model_with_adapters_off_inside_the_context():
    model = lora_model()
    x = torch.randn(5, 4)
    with model.disable_adapter():
        base = model(x)
    adapted = model(x)
    assert not torch.allclose(base, adapted)
    ref, ctx = reference_context(model, None)
    with ctx:
        assert ref is model and torch.allclose(ref(x), base)
    assert torch.allclose(model(x), adapted)


def test_a_model_without_adapters_has_no_reference_to_fall_back_on():
    _, ctx = reference_context(torch.nn.Linear(3, 3), None)
    with pytest.raises(RuntimeError, match="no adapters"), ctx:
        pass
