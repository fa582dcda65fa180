"""Diffusion branch: pipelines, samplers with log-probs, AlignProp, DDPO, Flow-GRPO, AWM."""
