"""Reading a run directory for the viewer: step index, metrics, rollout groups, and the one door to files.

Everything the app shows comes from ``RUN_DIR``: ``metrics.jsonl`` (one JSON object per step), the rollout files
``rollouts/step_NNNNNN.jsonl`` (one JSON object per prompt group, written by ``mmrl.store.group_record`` on the VLM
side and ``mmrl.diffusion.trainer.write_rollouts`` on the diffusion side), ``config.json`` (which task), and the
media the records name. Opening a run reads only the folder listing, ``metrics.jsonl`` and ``config.json``; a step's
rollout file is read when the step is shown (and cached by modification time, so a run still training is re-read
only where it changed). Nothing here raises on a bad file: problems come back as messages the UI shows.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mmrl.demo.text import visible

STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")


class RefusedPath(ValueError):
    """A record named a file outside the run directory (or a path that is not a plain relative name)."""


def inside(root: Path, name: str) -> Path:
    """``root / name`` resolved (symlinks followed), if it stays inside ``root``; else ``RefusedPath``.

    ``name`` is a path from a rollout record, untrusted: ``../../etc/passwd``, an absolute path elsewhere, or a
    symlink that leaves ``root`` are all refused. An absolute path inside ``root`` is accepted.
    """
    root = root.resolve()
    if not isinstance(name, str) or not name or "\x00" in name:
        raise RefusedPath(f"not a file name: {name!r}")
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise RefusedPath(f"{name} is outside the run directory {root}; the viewer serves only files inside it")
    return path


@dataclass
class Sample:
    """One completion (VLM) or image (diffusion) of a group, flattened for the tables."""

    group: int
    index: int
    total: float | None
    advantage: float | None
    rewards: dict[str, float | None]
    completion: str | None = None
    length: int | None = None
    truncated: bool | None = None
    image: str | None = None


@dataclass
class StepRollouts:
    """The groups of one step's rollout file and whatever went wrong reading it."""

    step: int
    groups: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def samples(self) -> list[Sample]:
        return [s for g, group in enumerate(self.groups) for s in group_samples(g, group)]


def _item(values: Any, i: int) -> Any:
    return values[i] if isinstance(values, list) and i < len(values) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def group_samples(g: int, group: dict) -> list[Sample]:
    """The samples of group ``g``: one per completion (VLM records) or per image (diffusion records). Missing or
    malformed per-sample fields become ``None`` rather than errors; reward names, shown as labels, are ``visible``."""
    completions = group.get("completions")
    diffusion = group.get("kind") == "diffusion"
    count = len(group.get("images") or []) if diffusion else len(completions or [])
    rewards = group.get("rewards") if isinstance(group.get("rewards"), dict) else {}
    return [
        Sample(
            group=g, index=i,
            total=_number(_item(group.get("total"), i)),
            advantage=_number(_item(group.get("advantages"), i)),
            rewards={visible(name): _number(_item(values, i)) for name, values in rewards.items()},
            completion=None if diffusion else str(_item(completions, i)),
            length=_item(group.get("lengths"), i),
            truncated=_item(group.get("truncated"), i),
            image=_item(group.get("images"), i) if diffusion else None,
        )
        for i in range(count)
    ]


def json_lines(path: Path | str, text: str, partial_tail: bool = False) -> tuple[list[tuple[int, dict]], list[str]]:
    """``(line number, object)`` for each JSON-object line of ``text``, and one ``PATH:LINE: ...`` problem per bad
    line (blank lines are skipped). With ``partial_tail``, a bad last line with no newline after it is skipped
    silently: a writer is still appending it."""
    lines = text.split("\n")
    objects, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if not (partial_tail and number == len(lines)):
                problems.append(f"{path}:{number}: not valid JSON ({exc.msg}); line skipped")
            continue
        if isinstance(value, dict):
            objects.append((number, value))
        else:
            problems.append(f"{path}:{number}: a line must be a JSON object; line skipped")
    return objects, problems


@lru_cache(maxsize=64)
def _read_rollouts(path: str, mtime_ns: int, size: int) -> tuple[tuple[dict, ...], tuple[str, ...]]:
    """Parse one rollout file (written atomically, so no partial lines); the mtime and size in the key make a
    rewritten file a cache miss."""
    with open(path, encoding="utf-8", errors="replace") as f:
        objects, problems = json_lines(path, f.read())
    return tuple(group for _, group in objects), tuple(problems)


class RunView:
    """Read-only view of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"run directory not found: {root}")

    def steps(self) -> list[int]:
        """Steps that have a rollout file, ascending (read from the folder listing only)."""
        folder = self.root / "rollouts"
        if not folder.is_dir():
            return []
        with os.scandir(folder) as entries:
            found = (STEP_FILE.match(e.name) for e in entries)
            return sorted(int(m.group(1)) for m in found if m)

    def config(self) -> dict:
        path = self.root / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def kind(self) -> str:
        """What the run trained: a VLM task name, ``diffusion`` or ``unknown``."""
        config = self.config()
        if "task" in config:
            return str(config["task"])
        return "diffusion" if "algorithm" in config else "unknown"

    def metrics(self) -> tuple[list[dict], list[str]]:
        """``metrics.jsonl`` rows and problems. A half-written last line (the trainer is appending) is skipped
        silently; a bad line elsewhere is reported with its line number."""
        path = self.root / "metrics.jsonl"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return [], [f"{path} not found: no metrics to plot yet"]
        except OSError as exc:
            return [], [f"cannot read {path}: {exc}"]
        objects, problems = json_lines(path, text, partial_tail=True)
        rows = [row for _, row in objects if isinstance(row.get("step"), int)]
        problems += [f"{path}:{number}: a metrics line needs an integer 'step'; line skipped"
                     for number, row in objects if not isinstance(row.get("step"), int)]
        return rows, problems

    def rollouts(self, step: int) -> StepRollouts:
        path = self.root / "rollouts" / f"step_{step:06d}.jsonl"
        try:
            stat = path.stat()
            groups, problems = _read_rollouts(str(path), stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return StepRollouts(step, problems=[f"rollout file {path} not found"])
        except OSError as exc:
            return StepRollouts(step, problems=[f"cannot read rollout file {path}: {exc}"])
        if not groups and not problems:
            problems = (f"rollout file {path} is empty",)
        return StepRollouts(step, list(groups), list(problems))

    def media(self, group: dict, kind: str) -> list[str]:
        """The record's ``kind`` (``images`` or ``videos``) as paths to resolve inside the run: the copies under
        ``media/`` that the trainer made (``record["media"]``), else the record's own paths."""
        stored = group.get("media")
        paths = stored.get(kind) if isinstance(stored, dict) else None
        if paths is None:
            paths = group.get(kind)
        return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []

    def file(self, name: str) -> Path:
        """The run's file ``name`` (``RefusedPath`` outside the run, ``FileNotFoundError`` if absent)."""
        path = inside(self.root, name)
        if not path.is_file():
            raise FileNotFoundError(f"{name} not found in the run directory")
        return path
