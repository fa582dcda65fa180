"""The run directory: ``metrics.jsonl``, ``rollouts/step_NNNNNN.jsonl``, ``summary.json`` (and the experiment
trackers' files, e.g. TensorBoard's under ``tb/``: ``mmrl.tracking``).

Rollout files hold one JSON object per group (prompt, image paths, reward fields, completions, every reward
component, total reward, advantages, lengths, truncation flags); the demo app reads them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from mmrl.errors import ConfigError, DataError
from mmrl.types import Group


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file beside it and ``os.replace`` (readers never see
    half a file); the parent folder is created if missing, and the temporary file removed if the write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON (and a final newline) into ``path``, atomically (``atomic_write_text``)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def publish_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older ``final`` (the rename is atomic)."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


RUN_ARTIFACTS = ("metrics.jsonl", "sft_metrics.jsonl", "rollouts", "media", "checkpoints", "tb", "sft_model", "final",
                 "eval_before.json", "summary.json", "config.json")
"""What a run writes into its directory; a fresh run refuses to mix with these unless told to overwrite."""


def build_dir(final: Path, build: Callable[[Path], Any]) -> Path:
    """Run ``build(tmp)`` on a fresh empty folder ``tmp`` beside ``final``, then publish it as ``final``
    (``publish_dir``: readers see the old folder or the whole new one, never half of it); ``tmp`` is removed if
    ``build`` fails. Returns ``final``."""
    final = Path(final)
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_once(folder: str | Path, build: Callable[[Path], Any], markers: Sequence[str]) -> Path:
    """``folder``, built first by ``build_dir(folder, build)`` unless every file named in ``markers`` (paths
    relative to it) is already there: the build-once cache of generated data and tiny checkpoints."""
    folder = Path(folder).expanduser()
    if not all((folder / name).is_file() for name in markers):
        build_dir(folder, build)
    return folder


def cached_build(cache_dir: str, kind: str, params: dict, filename: str, build: Callable[[Path], Any]) -> Path:
    """``CACHE/data/<kind>-<digest>/<filename>``, where the digest hashes ``params`` (JSON, sorted keys); built
    once by ``build(folder)`` (``build_once``)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return build_once(Path(cache_dir).expanduser() / "data" / f"{kind}-{digest}", build, [filename]) / filename


def claim_run_dir(root: str | Path, *, resume: bool, overwrite: bool, delete: bool = True) -> None:
    """Make ``root`` ready for a fresh run (resume: nothing to do). A folder that already holds a run raises
    ``ConfigError`` unless ``overwrite``, which deletes that run's files (and nothing else) when ``delete``
    (every rank checks; only the main process deletes)."""
    root = Path(root)
    found = [name for name in RUN_ARTIFACTS if (root / name).exists()]
    if resume or not found:
        return
    if not overwrite:
        raise ConfigError(f"output_dir {root} already holds a run ({', '.join(found)}): pass resume=true to "
                          "continue it, overwrite=true to replace it, or another output_dir")
    for name in found if delete else []:
        path = root / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


ROLLOUT_NAME = re.compile(r"^step_(\d{6})(\.jsonl)?$")
"""A step's rollouts: ``rollouts/step_NNNNNN.jsonl`` and (diffusion) its images' folder ``rollouts/step_NNNNNN/``."""
TEMPORARY_NAME = re.compile(r"^\..+\.tmp\d+$")
"""The temporary files of ``atomic_write_text`` and ``RunDir.publish_media``: ``.NAME.tmpPID``."""


def logged_upto(path: Path, step: int) -> str:
    """The text of the ``.jsonl`` log ``path`` without the records of steps after ``step`` and without an
    unfinished last line (no newline: its writer was killed mid-write). Any other line that is not a JSON object
    is damage a kill cannot cause: ``DataError`` naming the file and line."""
    text = path.read_text(encoding="utf-8")
    keep = []
    for number, line in enumerate(text.split("\n")[:-1], 1):  # what follows the last newline is unfinished
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not a JSON line ({e}); repair or delete the line to resume") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: a JSON object expected, got {type(record).__name__}")
        if record.get("step", 0) <= step:
            keep.append(line + "\n")
    return "".join(keep)


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files (``TEMPORARY_NAME``) that a process killed before its ``os.replace`` left in
    ``folder`` (they would stay for ever: the next writer's name holds another process id)."""
    for path in folder.glob(".*.tmp*") if folder.is_dir() else []:
        if TEMPORARY_NAME.match(path.name) and path.is_file():
            path.unlink()


def group_record(step: int, group: Group) -> dict[str, Any]:
    s = group.sample
    return {
        "step": step,
        "id": s.id,
        "prompt": s.prompt,
        "images": s.images,
        "videos": s.videos,
        "answer": s.answer,
        "fields": s.fields,
        "completions": group.completions,
        "rewards": group.rewards,
        "total": group.total,
        "advantages": group.advantages,
        "lengths": group.lengths,
        "truncated": group.truncated,
        "trained": group.trained,
        "offpolicy": group.offpolicy,
    }


class RunDir:
    """Writes a run's logs; every method is a no-op on non-main processes, but for ``log_metrics`` handing the
    metrics to ``log`` (accelerate's ``Accelerator.log``, called on every process: its trackers log on the main
    one)."""

    def __init__(self, root: str | Path, main: bool = True, log: Callable[..., None] | None = None):
        self.root = Path(root)
        self.main = main
        self._log = log
        self._media: dict[str, str | None] = {}
        if main:
            (self.root / "rollouts").mkdir(parents=True, exist_ok=True)

    def rewind(self, step: int, cold_start: bool = False) -> None:
        """Forget what a killed run wrote after its checkpoint of ``step`` (0: none), so that the resumed run
        writes every later step exactly once: later steps' lines of ``metrics.jsonl`` and a line the kill cut
        short (``logged_upto``), their rollout files and folders, and the temporaries a kill left behind
        (``remove_temporaries``) in the run directory, ``rollouts/`` and ``media/``. With ``cold_start`` (nothing
        to resume: the cold start runs again) ``sft_metrics.jsonl`` goes too."""
        if not self.main:
            return
        for name, upto in (("metrics.jsonl", step), ("sft_metrics.jsonl", 0 if cold_start else None)):
            path = self.root / name
            if upto is not None and path.exists():
                atomic_write_text(path, logged_upto(path, upto))
        for path in (self.root / "rollouts").iterdir():
            match = ROLLOUT_NAME.match(path.name)
            if match and int(match[1]) > step:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for folder in (self.root, self.root / "rollouts", self.root / "media"):
            remove_temporaries(folder)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One line of ``metrics.jsonl`` and the same values, at the same step, to the experiment trackers."""
        if self.main:
            with open(self.root / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._log is not None:
            self._log(metrics, step=step)

    def log_sft(self, step: int, metrics: dict[str, float]) -> None:
        """Cold-start losses go to ``sft_metrics.jsonl`` (``metrics.jsonl`` counts RL steps)."""
        if self.main:
            with open(self.root / "sft_metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_rollouts(self, step: int, groups: list[Group], media: bool = True) -> None:
        """One line per group into ``rollouts/step_NNNNNN.jsonl``; with ``media``, each record also names the
        copies of its images and videos that ``publish_media`` keeps in the run (what ``mmrl demo`` shows)."""
        if not self.main:
            return
        records = [group_record(step, g) for g in groups]
        for record in records if media else []:
            record["media"] = {kind: [self.publish_media(p) for p in record[kind] or []]
                               for kind in ("images", "videos")}
        text = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write_text(self.root / "rollouts" / f"step_{step:06d}.jsonl", text)

    def publish_media(self, source: str) -> str | None:
        """``media/<digest>-<name>``, a hard link to (or, across file systems, a copy of) the file ``source``,
        made once per run; the relative path, or ``None`` if ``source`` is not a readable file. The viewer reads
        only files inside the run directory, so the run keeps its own copy of what its rollouts showed."""
        if source not in self._media:
            self._media[source] = self._store_media(Path(source))
        return self._media[source]

    def _store_media(self, source: Path) -> str | None:
        digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
        name = f"media/{digest}-{source.name}"
        target = self.root / name
        if target.is_file():
            return name
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            return None
        return name

    def write_json(self, name: str, data: dict) -> None:
        if self.main:
            write_json_atomic(self.root / name, data)

    def read_json(self, name: str) -> dict | None:
        path = self.root / name
        return json.loads(path.read_text()) if path.exists() else None
