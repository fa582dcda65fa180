"""Groups of sampled completions: generation, scoring, and the row bookkeeping the trainer needs.

A ``Rollouts`` holds ``N`` completion rows; rows with the same ``group_ids`` value are completions of the same
prompt. Prompt encodings are kept per micro-batch from generation and reused by the log-prob passes; a
subset of rows (Reinforce-Ada keeping a balanced group) is encoded again on demand.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mmrl.data import MediaCache
from mmrl.rollout.hf import encode_answers, generate, sanitize, token_stats
from mmrl.rollout.scoring import score
from mmrl.rollout.logprobs import TokenStats
from mmrl.rollout.shared import shared_generate, shared_token_stats
from mmrl.types import Group, Sample


class Chunk(NamedTuple):
    """One micro-batch: completion ``rows`` and the prompt encoding they continue. ``group_size`` 1: one prompt
    row per completion (full sequences); G > 1: one prompt row per group of G consecutive completions (shared
    prefix)."""

    rows: slice
    prompts: object
    group_size: int

    def stats(self, model, ids: torch.Tensor, mask: torch.Tensor, temperature: float, *, entropy: bool = False,
              distributions: bool = False) -> TokenStats:
        """The rows' token log-probs (and entropies / full distributions when asked), ``rollout.logprobs``."""
        if self.group_size == 1:
            return token_stats(model, self.prompts, ids, mask, temperature, entropy=entropy,
                               distributions=distributions)
        return shared_token_stats(model, self.prompts, ids, mask, self.group_size, temperature, entropy=entropy,
                                  distributions=distributions)


def uniform_group_size(group_ids: torch.Tensor) -> int | None:
    """G when the rows form consecutive groups of G rows each (what the shared prefix needs), else None."""
    values, counts = torch.unique_consecutive(group_ids, return_counts=True)
    if len(counts) == 0 or (counts != counts[0]).any() or len(torch.unique(values)) != len(values):
        return None
    return int(counts[0])


@dataclass
class Rollouts:
    """``N`` completion rows, row-aligned: ``samples[i]`` produced ``ids[i]``."""

    samples: list[Sample]
    group_ids: torch.Tensor
    """[N] prompt index of each row (unique within a step)."""
    ids: torch.Tensor
    """[N, T] completion tokens (pad after EOS)."""
    mask: torch.Tensor
    """[N, T] 1 on completion tokens."""
    texts: list[str]
    truncated: torch.Tensor
    """[N] bool: no EOS within max_new_tokens."""
    components: dict[str, torch.Tensor]
    """Reward component name -> [N] values."""
    total: torch.Tensor
    """[N] weighted sum of the components."""
    failures: dict[str, torch.Tensor] = field(default_factory=dict)
    """Reward name -> [N] 1.0 where that reward failed on the row (it scored 0; ``mmrl.rollout.scoring``)."""
    pad_id: int = 0
    """Token that fills ``ids`` after each completion's end."""
    dropped_placeholders: int = 0
    encodings: list[Chunk] | None = None
    """Micro-batches with their prompt encodings (from generation: one prompt row per completion), or None to
    encode on demand."""
    advantages: torch.Tensor | None = None
    """[N] set by the trainer."""
    weight: torch.Tensor | None = None
    """[N] 1 for rows that enter the loss, 0 for rows filtered out (dynamic sampling, overlong filtering)."""
    keep: torch.Tensor | None = None
    """[N] bool, rows that form the training batch once advantages are computed (None: all). Reinforce-Ada
    samples more completions than it trains on; the rest only inform the advantage statistics."""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """Further per-row values (e.g. the KL penalty put in the reward)."""
    offpolicy: torch.Tensor | None = None
    """[N] bool, rows that hold the ground-truth answer instead of a sample (TempSamp-R1); None: none do."""

    def __len__(self) -> int:
        return len(self.samples)

    def chunks(self, processor, media: MediaCache, size: int, device, shared: bool = False) -> list[Chunk]:
        """Micro-batches of about ``size`` completions with their prompt encodings. ``shared``: whole groups per
        micro-batch and one encoded prompt per group (falls back to per-completion prompts when the rows are not
        consecutive equal-size groups); otherwise the generation's encodings are reused when present."""
        group = uniform_group_size(self.group_ids) if shared else None
        if group is not None and group > 1:
            if self.encodings and self.encodings[0].group_size == group:
                return self.encodings
            step = max(group, size // group * group)
            self.encodings = []
            for sl in slices(len(self), step):
                firsts = self.samples[sl][::group]
                enc = media.encode(processor, firsts).to(device)
                self.encodings.append(Chunk(sl, enc, group))
        elif self.encodings is None or self.encodings[0].group_size != 1:
            self.encodings = []
            for sl in slices(len(self), size):
                rows = self.samples[sl]
                enc = media.encode(processor, rows).to(device)
                self.encodings.append(Chunk(sl, enc, 1))
        return self.encodings

    def subset(self, rows: torch.Tensor) -> Rollouts:
        """The given rows (their prompts are encoded again on demand)."""
        idx = rows.tolist()
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return replace(
            self, samples=[self.samples[i] for i in idx], group_ids=self.group_ids[rows], ids=self.ids[rows],
            mask=self.mask[rows], texts=[self.texts[i] for i in idx], truncated=self.truncated[rows],
            components={k: v[rows] for k, v in self.components.items()}, total=self.total[rows],
            failures={k: v[rows] for k, v in self.failures.items()},
            encodings=None, advantages=pick(self.advantages), weight=pick(self.weight), keep=pick(self.keep),
            extra={k: v[rows] for k, v in self.extra.items()}, offpolicy=pick(self.offpolicy),
        )


def slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _pad_cat(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])


def concat(parts: list[Rollouts]) -> Rollouts:
    """Rows of several rollouts in order (encodings dropped: micro-batches no longer line up)."""
    if len(parts) == 1:
        return parts[0]
    pad_id = parts[0].pad_id
    return Rollouts(
        samples=[s for p in parts for s in p.samples], group_ids=torch.cat([p.group_ids for p in parts]),
        ids=_pad_cat([p.ids for p in parts], pad_id), mask=_pad_cat([p.mask for p in parts], 0),
        texts=[t for p in parts for t in p.texts], truncated=torch.cat([p.truncated for p in parts]),
        components={k: torch.cat([p.components[k] for p in parts]) for k in parts[0].components},
        total=torch.cat([p.total for p in parts]), pad_id=pad_id,
        failures={k: torch.cat([p.failures[k] for p in parts]) for k in parts[0].failures},
        dropped_placeholders=sum(p.dropped_placeholders for p in parts),
        offpolicy=None if parts[0].offpolicy is None else torch.cat([p.offpolicy for p in parts]),
    )


def sample_groups(model, processor, prompts: list[Sample], n: int, group_ids: list[int], media: MediaCache,
                  rewards, *, micro_batch_size: int, suppress: list[int], device, shared: bool = False,
                  answer_slot: bool = False, reward_timeout: float | None = None, step_info: dict | None = None,
                  **sampling) -> Rollouts:
    """``n`` completions of each prompt, scored; prompt k's rows get group id ``group_ids[k]``.

    ``shared``: each prompt is encoded and prefilled once and its completions decoded from the repeated KV cache
    (``shared_generate``); otherwise HF ``generate`` on the prompt repeated. ``answer_slot`` (TempSamp-R1
    off-policy guidance): ``n - 1`` completions are sampled and the last row of each group is the sample's
    ground-truth answer, scored like the others and flagged in ``Rollouts.offpolicy`` (the full-sequence path then
    encodes its prompts again for the log-prob passes; shared encodings are kept). All completions are scored
    together, each reward function called once (``mmrl.rollout.scoring.score``, ``reward_timeout``, ``step_info``
    fields). ``sampling``:
    ``max_new_tokens``, ``temperature``, ``top_p``.
    """
    drawn = n - 1 if answer_slot else n
    rows = [s for s in prompts for _ in range(drawn)]
    encodings, outs = [], []
    step = max(drawn, micro_batch_size // drawn * drawn) if shared else micro_batch_size
    for sl in slices(len(rows), step):
        firsts = rows[sl][::drawn] if shared else rows[sl]
        enc = media.encode(processor, firsts).to(device)
        encodings.append(Chunk(sl, enc, drawn if shared else 1))
        if shared:
            outs.append(shared_generate(model, processor, enc, drawn, suppress_ids=suppress, **sampling))
        else:
            outs.append(generate(model, processor, enc, do_sample=True, suppress_ids=suppress, **sampling))
    pad = processor.tokenizer.pad_token_id
    ids, mask = _pad_cat([o.ids for o in outs], pad), _pad_cat([o.mask for o in outs], 0)
    texts, truncated = [t for o in outs for t in o.texts], [t for o in outs for t in o.truncated]
    offpolicy = torch.zeros(len(rows), dtype=torch.bool)
    if answer_slot:
        ids, mask, texts, truncated, offpolicy = with_answer_slots(processor.tokenizer, prompts, ids, mask, texts,
                                                                   truncated, drawn)
        rows = [s for s in prompts for _ in range(n)]
        # a shared encoding holds one prompt row per group: it stays valid, its slice widens to n rows per group
        encodings = [Chunk(slice(c.rows.start // drawn * n, c.rows.stop // drawn * n), c.prompts, n)
                     for c in encodings] if shared else None
    ids, mask, dropped = sanitize(ids, mask, suppress, pad)
    scores = score(rewards, texts, rows, reward_timeout, step_info)
    return Rollouts(
        samples=rows, group_ids=torch.tensor(group_ids, dtype=torch.long).repeat_interleave(n),
        ids=ids, mask=mask, texts=texts, truncated=torch.tensor(truncated),
        components=scores.components, total=scores.total, failures=scores.failures, pad_id=pad,
        dropped_placeholders=dropped, encodings=encodings,
        offpolicy=offpolicy,
    )


def with_answer_slots(tokenizer, prompts: list[Sample], ids: torch.Tensor, mask: torch.Tensor, texts: list[str],
                      truncated: list[bool], drawn: int):
    """Append each prompt's ground-truth answer (+ EOS) after its ``drawn`` sampled rows; returns the new
    ``ids, mask, texts, truncated`` and the ``offpolicy`` row flags."""
    k = len(ids)
    answer_ids, answer_mask = encode_answers(tokenizer, [s.answer for s in prompts])
    order = [i for p in range(len(prompts)) for i in [*range(p * drawn, (p + 1) * drawn), k + p]]
    ids = _pad_cat([ids, answer_ids], tokenizer.pad_token_id)[order]
    mask = _pad_cat([mask, answer_mask], 0)[order]
    all_texts, all_truncated = [*texts, *(s.answer for s in prompts)], [*truncated, *[False] * len(prompts)]
    offpolicy = torch.tensor([i >= k for i in order])
    return ids, mask, [all_texts[i] for i in order], [all_truncated[i] for i in order], offpolicy


def to_groups(ro: Rollouts) -> list[Group]:
    """The rollouts as one ``Group`` record per prompt, for ``rollouts/step_N.jsonl``."""
    groups = []
    lengths = ro.mask.sum(-1)
    for g in _ordered_groups(ro.group_ids):
        rows = (ro.group_ids == g).nonzero().flatten()
        pick = lambda t: t[rows].tolist()  # noqa: E731
        groups.append(Group(
            sample=ro.samples[int(rows[0])], completions=[ro.texts[i] for i in rows.tolist()],
            rewards={k: pick(v) for k, v in ro.components.items()}, total=pick(ro.total),
            advantages=pick(ro.advantages), truncated=pick(ro.truncated), lengths=pick(lengths),
            trained=[bool(w) for w in pick(ro.weight)],
            offpolicy=pick(ro.offpolicy) if ro.offpolicy is not None else [False] * len(rows),
        ))
    return groups


def _ordered_groups(group_ids: torch.Tensor) -> list[int]:
    seen: dict[int, None] = {}
    for g in group_ids.tolist():
        seen.setdefault(g, None)
    return list(seen)
