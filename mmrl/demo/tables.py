"""The viewer's tables and plot data, as pure functions of what ``mmrl.demo.runs`` read (no Gradio here)."""
from __future__ import annotations

import math

import pandas as pd

from mmrl.demo.runs import Sample, StepRollouts
from mmrl.demo.text import visible

ORDERS = ("failures first", "best first", "as logged")
ALL_GROUPS = "all groups"
PREVIEW_CHARS = 80
HEADER_CHARS = 24
"""A reward name longer than this is cut in the sample table's header (the reward table shows it whole): a long
name would otherwise make a header taller than the table's window."""

PLOTS = {
    "reward": ("Reward mean and std", lambda key: key in ("reward/mean", "reward/std")),
    "kl": ("KL to the reference", lambda key: key == "kl"),
    "length": ("Completion length", lambda key: key.startswith("completion_len")),
    "components": ("Reward components (means)",
                   lambda key: key.startswith("reward/") and key not in ("reward/mean", "reward/std")),
}
"""Plot name -> (title, which ``metrics.jsonl`` keys it draws against step)."""


def sort_samples(samples: list[Sample], order: str) -> list[Sample]:
    """``failures first``: lowest total reward first; ``best first``: highest first; ``as logged``: file order.
    Samples without a total go last in both sorted orders; ties keep file order."""
    if order == "as logged":
        return list(samples)
    known = [s for s in samples if _finite(s.total)]
    unknown = [s for s in samples if not _finite(s.total)]
    return sorted(known, key=lambda s: s.total, reverse=order == "best first") + unknown


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def group_label(g: int, group: dict) -> str:
    text = " ".join(str(group.get("prompt", "")).split())
    return f"{g}: {visible(text[:60])}"


def group_choices(rollouts: StepRollouts) -> list[str]:
    return [ALL_GROUPS] + [group_label(g, group) for g, group in enumerate(rollouts.groups)]


def chosen_samples(rollouts: StepRollouts, group: str | None, order: str) -> list[Sample]:
    """The samples of the chosen group (``"G: prompt"``) or of all groups, in ``order``."""
    samples = rollouts.samples()
    if group and group != ALL_GROUPS:
        g = int(group.split(":", 1)[0])
        samples = [s for s in samples if s.group == g]
    return sort_samples(samples, order)


def _fmt(value: float | None) -> float | str:
    return round(float(value), 4) if _finite(value) else "-"


def sample_frame(rollouts: StepRollouts, samples: list[Sample]) -> pd.DataFrame:
    """One row per sample: group, sample, total, advantage, each reward component, length, truncation, and the
    start of the completion (VLM) or the group's prompt (diffusion), ``visible``; headers cut at ``HEADER_CHARS``."""
    components = sorted({name for s in samples for name in s.rewards})
    rows = []
    for s in samples:
        text = s.completion if s.completion is not None else rollouts.groups[s.group].get("prompt", "")
        text = " ".join(str(text).split())
        rows.append({
            "group": s.group, "sample": s.index, "total": _fmt(s.total), "advantage": _fmt(s.advantage),
            **{name: _fmt(s.rewards.get(name)) for name in components},
            "length": "-" if s.length is None else s.length,
            "truncated": "-" if s.truncated is None else ("yes" if s.truncated else "no"),
            "text": visible(_cut(text, PREVIEW_CHARS)),
        })
    columns = ["group", "sample", "total", "advantage", *components, "length", "truncated", "text"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.columns = [_cut(name, HEADER_CHARS) for name in columns]
    return frame


def _cut(text: str, limit: int) -> str:
    """``text`` up to ``limit`` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def reward_frame(sample: Sample) -> pd.DataFrame:
    """The sample's every reward component, then its total, advantage, length and truncation flag."""
    rows = [(f"reward: {name}", _fmt(value)) for name, value in sample.rewards.items()]
    rows += [("total", _fmt(sample.total)), ("advantage", _fmt(sample.advantage)),
             ("length", "-" if sample.length is None else sample.length),
             ("truncated", "-" if sample.truncated is None else ("yes" if sample.truncated else "no"))]
    return pd.DataFrame(rows, columns=["", "value"]).astype({"value": str})


def step_summary(rollouts: StepRollouts) -> dict[str, float | str]:
    """Mean total, mean of each component, mean length and truncated fraction over the step's samples."""
    samples = rollouts.samples()

    def mean(values: list) -> float | str:
        values = [float(v) for v in values if _finite(v)]
        return round(sum(values) / len(values), 4) if values else "-"

    out = {"groups": len(rollouts.groups), "samples": len(samples), "total (mean)": mean([s.total for s in samples])}
    for name in sorted({n for s in samples for n in s.rewards}):
        out[f"{name} (mean)"] = mean([s.rewards.get(name) for s in samples])
    out["length (mean)"] = mean([s.length for s in samples])
    out["truncated (frac)"] = mean([float(s.truncated) for s in samples if s.truncated is not None])
    return out


def summary_frame(a: StepRollouts | None, b: StepRollouts | None) -> pd.DataFrame:
    """Two steps' summaries side by side (``-`` where a step is not chosen or lacks the entry)."""
    sa = step_summary(a) if a is not None else {}
    sb = step_summary(b) if b is not None else {}
    keys = list(dict.fromkeys([*sa, *sb]))
    label_a = f"step {a.step}" if a is not None else "step A"
    label_b = f"step {b.step}" if b is not None else "step B (none)"
    return pd.DataFrame([(k, str(sa.get(k, "-")), str(sb.get(k, "-"))) for k in keys],
                        columns=["", label_a, label_b])


MAX_POINTS = 250
"""Curves are thinned to at most this many steps (every k-th row, the last always kept): a plot a few hundred
pixels wide shows no more, and the browser draws 1,000-step runs several times faster."""


def thin(rows: list[dict], limit: int = MAX_POINTS) -> list[dict]:
    """Every ``ceil(len / limit)``-th row, counted back from the last (which is always kept)."""
    stride = -(-len(rows) // limit) if rows else 1
    return rows[::-1][::stride][::-1]


def plot_frame(rows: list[dict], keep) -> pd.DataFrame:
    """Long-form ``step, value, series`` rows of the metric keys ``keep(key)`` accepts (finite numbers only), over
    the ``thin``-ned rows; series names are ``visible``."""
    out = [(row["step"], float(v), visible(key)) for row in thin(rows) for key, v in row.items()
           if key != "step" and keep(key) and _finite(v)]
    return pd.DataFrame(out, columns=["step", "value", "series"])
