"""Crash consistency under kill -9 (issue 23): kill real training runs at random moments, resume them, and check
that they end exactly as a run that was never interrupted.

    python benchmarks/kill_campaign.py [--runs vlm diffusion] [--kills 10] [--seed 0] [--workdir DIR]

For each run type (``RUN_TYPES``: ``vlm`` is ``mmrl train gui_grounding`` with a cold start (SFT) and GRPO steps on
the tiny Qwen2.5-VL, ``diffusion`` is ``mmrl diffusion train ddpo`` on the tiny SD pipeline; both checkpoint every
step):

1. the reference: the run straight through, ``python -m mmrl ...`` in a subprocess;
2. the same run in another directory, killed with SIGKILL ``--kills`` times, restarted with ``resume=true`` after
   each kill, and at last left to finish. Each kill aims at a phase of the run: the cold start, the rollouts, the
   optimisation, a checkpoint being written, or ``anywhere`` (a seeded delay after the process starts: interpreter
   start, imports, model loading, resuming, ...); each time the least aimed-at phase still ahead of the run
   (``choose``), and at a step of it (``aim``). While it waits for that phase the campaign samples the child's
   Python stack every few milliseconds (the child writes it on SIGUSR1, ``child``), names the phase from the
   stack's frames (``classify``) and kills the child as soon as a sample shows the phase at the step aimed at
   (``hunt``). A seeded generator picks the steps, how many sightings of the phase to let pass, the sampling
   intervals and the ``anywhere`` delays, so the plan is reproducible; where a kill lands depends on the machine's
   timing, and the comparison must hold wherever it lands;
3. the comparison (``compare``): ``metrics.jsonl`` (and the cold start's ``sft_metrics.jsonl``) hold each step
   exactly once, in order, with the reference's values in every field but the wall-clock ones (``WALL_CLOCK``);
   ``rollouts/``, ``media/``, ``checkpoints/``, ``sft_model/`` and ``final/`` (the trained weights) hold the same
   files with the same bytes; the run directory holds the same files and folders as the reference's (no leftover
   temporaries; ``tb/`` aside: each process writes its own TensorBoard event file); ``eval_before.json`` and
   ``summary.json`` (paths aside) are equal.

It prints a table of the kills and one of the checks, and exits 1 on any difference or when a run ended before
receiving its kills. Results: benchmarks/RESULTS.md. ``tests/e2e/test_kill_campaign.py`` runs a short campaign.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]

WALL_CLOCK = ("step_seconds",)
"""The metric fields that measure time (each trainer's only one): left out of the comparison."""
PATH_KEYS = ("output_dir", "model")
"""``summary.json`` keys that name the run's own directory: left out of the comparison."""
ANYWHERE = "anywhere"
RL_PHASES = ("rollouts", "optimisation", "checkpoint write")
COLD_START = "cold start"
STARTUP = "startup"
"""The phase before the trainer runs (interpreter, imports, config); also before the child can be sampled."""
OTHER = "trainer (other)"
"""Inside the trainer but in none of the named phases (step metrics, setup between phases)."""

COMMON_PHASES = (
    ("mmrl/checkpoint.py", "save", "checkpoint write"),
    ("mmrl/checkpoint.py", "resume_point", "resume"),
    ("mmrl/checkpoint.py", "load", "resume"),
    ("mmrl/store.py", "rewind", "resume"),
    ("mmrl/store.py", "log_metrics", "logging"),
    ("mmrl/store.py", "log_rollouts", "logging"),
)


@dataclass(frozen=True)
class RunType:
    """A training command and how to read its stack."""

    name: str
    command: tuple[str, ...]
    """``mmrl``'s arguments; ``output_dir``, ``model.cache_dir`` and ``resume`` are added."""
    steps_key: str
    """The config key of the number of RL steps (``command`` sets it)."""
    phases: tuple[tuple[str, str, str], ...]
    """``(file, function, phase)``: a frame of ``function`` in a file whose path ends with ``file`` puts the run in
    ``phase``; the outermost such frame decides, ``OTHER`` only when no other phase matches (``classify``)."""
    targets: tuple[str, ...]
    """The phases kills aim at; ``ANYWHERE`` and the RL phases are always among them."""
    cold_start: tuple[str, str] | None
    """The config key of the cold start's steps and the log it writes a line per step to (None: no cold start)."""
    logs: tuple[str, ...]
    """The run's JSON-lines logs, compared step by step."""
    trees: tuple[str, ...]
    """The run's folders compared file by file."""
    records: tuple[str, ...]
    """The run's JSON files compared key by key (``PATH_KEYS`` aside)."""

    def argv(self, out: Path, cache: Path, resume: bool, overrides: tuple[str, ...] = ()) -> list[str]:
        return [*self.command, *overrides, f"output_dir={out}", f"model.cache_dir={cache}",
                f"resume={str(resume).lower()}"]

    def setting(self, key: str, overrides: tuple[str, ...] = ()) -> int:
        """The run's integer setting ``key``: the last ``key=N`` among the command and ``overrides``."""
        return int([a.split("=", 1)[1] for a in (*self.command, *overrides) if a.startswith(f"{key}=")][-1])


RUN_TYPES = {
    "vlm": RunType(
        name="vlm",
        command=("train", "gui_grounding", "progress=false", "data.synthetic.n_train=32", "data.synthetic.n_eval=4",
                 "sft.steps=20", "sft.batch_size=8", "sft.lr=3e-3", "grpo.steps=8", "grpo.prompts_per_step=2",
                 "grpo.group_size=4", "grpo.max_new_tokens=8", "grpo.micro_batch_size=8", "grpo.lr=1e-3",
                 "grpo.mu=2", "grpo.beta=0.04", "grpo.prompt_sampler=vas", "grpo.advantage=bnpo",
                 "grpo.advantage_args={momentum: 0.5}", "eval.max_new_tokens=8", "eval.batch_size=4",
                 "save_every=1"),
        steps_key="grpo.steps",
        phases=(("mmrl/trainer.py", "cold_start_model", COLD_START),
                ("mmrl/trainer.py", "collect", "rollouts"),
                ("mmrl/trainer.py", "reference_logprobs", "optimisation"),
                ("mmrl/trainer.py", "optimise", "optimisation"),
                ("mmrl/trainer.py", "run_eval", "evaluation"),
                ("mmrl/trainer.py", "finish", "final save"),
                ("mmrl/models/load.py", "load_policy", "model load"),
                *COMMON_PHASES,
                ("mmrl/trainer.py", "train", OTHER)),
        targets=(COLD_START, "rollouts", "optimisation", "checkpoint write", ANYWHERE),
        cold_start=("sft.steps", "sft_metrics.jsonl"),
        logs=("metrics.jsonl", "sft_metrics.jsonl"),
        trees=("rollouts", "media", "checkpoints", "sft_model", "final"),
        records=("eval_before.json", "summary.json"),
    ),
    "diffusion": RunType(
        name="diffusion",
        command=("diffusion", "train", "ddpo", "progress=false", "optim.steps=8", "sampling.steps=4",
                 "optim.prompts_per_step=2", "optim.images_per_prompt=4", "optim.micro_batch_size=8",
                 "algorithm_args.stat_min_count=4", "save_every=1"),
        steps_key="optim.steps",
        phases=(("mmrl/diffusion/algorithms/base.py", "sample_with_advantages", "rollouts"),
                ("mmrl/diffusion/algorithms/policy_gradient.py", "ppo_update", "optimisation"),
                ("mmrl/diffusion/trainer.py", "write_rollouts", "logging"),
                ("mmrl/diffusion/artifacts.py", "save_final", "final save"),
                ("mmrl/diffusion/pipeline.py", "load_policy", "model load"),
                *COMMON_PHASES,
                ("mmrl/diffusion/trainer.py", "train", OTHER)),
        targets=("rollouts", "optimisation", "checkpoint write", ANYWHERE),
        cold_start=None,
        logs=("metrics.jsonl",),
        trees=("rollouts", "checkpoints", "final"),
        records=("summary.json",),
    ),
}

SIGHTINGS = {COLD_START: 2, "rollouts": 3, "optimisation": 3, "checkpoint write": 2}
"""How many samples showing the aimed-at phase, once the run has reached the step aimed at (``aim``), a kill lets
pass at most (the seeded generator picks 1 to this): few enough for the phase to be still on (a checkpoint of the
tiny models takes tens of milliseconds)."""
MAX_SKIP = 1
"""A kill aimed at an RL phase aims at one of the next ``MAX_SKIP + 1`` steps after the checkpoint resumed from."""
SAMPLE_INTERVAL = (0.001, 0.01)
"""Seconds between stack samples (uniform)."""


# --------------------------------------------------------------------------------------------------- the child


def child(dump: str, argv: list[str]) -> None:
    """Run ``mmrl ARGV`` in this process; on SIGUSR1 it appends its main thread's stack to ``dump``: a line
    ``FILE<tab>FUNCTION`` per frame, outermost first, then ``end``. ``dump`` exists once the handler is in place,
    ``dump.done`` once ``mmrl`` returned.

    The handler is Python's, so it runs between two bytecodes of the main thread (after a torch call rather than
    inside it). ``faulthandler``, which reads the frames from C at any instant, crashed the child now and then."""
    fd = os.open(f"{dump}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write_stack(_signum, frame) -> None:
        lines = []
        while frame is not None:
            lines.append(f"{frame.f_code.co_filename}\t{frame.f_code.co_name}\n")
            frame = frame.f_back
        os.write(fd, ("".join(reversed(lines)) + "end\n").encode())

    signal.signal(signal.SIGUSR1, write_stack)
    os.replace(f"{dump}.tmp", dump)
    from mmrl.cli import main

    main(argv)
    Path(f"{dump}.done").touch()


# ------------------------------------------------------------------------------------------- reading a stack


def first_stack(data: str) -> tuple[list[tuple[str, str]], int] | None:
    """The first whole stack written by ``child`` in ``data`` as ``(file, function)`` frames, outermost first, and
    the length of ``data`` it took; None before its ``end`` line is written."""
    end = data.find("end\n")
    if end < 0:
        return None
    return [tuple(line.split("\t", 1)) for line in data[:end].splitlines()], end + len("end\n")


def classify(frames: list[tuple[str, str]], phases) -> str:
    """The phase of a stack (outermost frame first): that of its outermost frame matching one of ``phases``
    (``RunType.phases``) but ``OTHER``; ``OTHER`` if only those match; ``STARTUP`` if none does."""
    found = [phase for file, function in frames for suffix, name, phase in phases
             if function == name and file.endswith("/" + suffix)]
    named = [p for p in found if p != OTHER]
    return named[0] if named else OTHER if found else STARTUP


def innermost_mmrl(frames: list[tuple[str, str]]) -> str:
    """``file:function`` of the innermost frame in the mmrl package (where in its phase a kill landed)."""
    inside = [(f, fn) for f, fn in frames if "/mmrl/" in f]
    if not inside:
        return "-"
    file, function = inside[-1]
    return f"{file.split('/mmrl/', 1)[1]}:{function}"


# ------------------------------------------------------------------------------------------- running a child


class Process:
    """One training process (``python kill_campaign.py --child DUMP -- ARGV``), which can be sampled and killed."""

    def __init__(self, argv: list[str], out: Path, dump: Path, log: Path):
        self.out, self.dump, self.done = out, dump, Path(f"{dump}.done")
        self.dump.unlink(missing_ok=True)
        self.done.unlink(missing_ok=True)
        self.offset = 0
        self.started = time.monotonic()
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, str(HERE), "--child", str(dump), "--", *argv], cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc.poll() is None

    def sample(self, timeout: float = 30.0) -> list[tuple[str, str]] | None:
        """The main thread's stack now (outermost frame first, ``child``), or None once the process is done or
        before its handler is in place."""
        if not self.running() or not self.dump.exists() or self.done.exists():
            return None
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.dump, "rb") as f:
                f.seek(self.offset)
                found = first_stack(f.read().decode(errors="replace"))
            if found is not None:
                self.offset += found[1]
                return found[0]
            if not self.running():
                return None
            time.sleep(0.0005)
        raise RuntimeError(f"no stack from process {self.proc.pid} within {timeout} s")

    def kill(self) -> int:
        os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()

    def seconds(self) -> float:
        return time.monotonic() - self.started


# ---------------------------------------------------------------------------------------------- the campaign


@dataclass
class Kill:
    number: int
    target: str
    resumed_from: int
    step: str = "-"
    """The step the kill aimed at (``aim``): ``SFT k`` or ``RL k``."""
    landed: str = ""
    where: str = ""
    seconds: float = 0.0


@dataclass
class Outcome:
    run_type: str
    kills: list[Kill] = field(default_factory=list)
    wanted: int = 0
    problems: list[str] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    reference_seconds: float = 0.0
    campaign_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and len(self.kills) >= self.wanted


def newest_checkpoint(out: Path) -> int:
    """The step of the checkpoint a resume would load (0: none): ``mmrl.checkpoint.newest_good``."""
    from mmrl.checkpoint import newest_good

    path, _ = newest_good(out)
    return 0 if path is None else int(path.name.removeprefix("step-"))


def published(out: Path, step: int) -> bool:
    return step == 0 or (out / "checkpoints" / f"step-{step:06d}" / "manifest.json").is_file()


def reachable(run_type: RunType, resumed_from: int, steps: int) -> list[str]:
    """The targets still ahead of a run resumed from checkpoint ``resumed_from`` of ``steps``: the cold start only
    without a checkpoint (else it is not run again), the RL phases while steps remain, ``ANYWHERE`` always."""
    ahead = {COLD_START: resumed_from == 0, ANYWHERE: True}
    return [t for t in run_type.targets if ahead.get(t, resumed_from < steps)]


def choose(run_type: RunType, resumed_from: int, steps: int, aimed: Counter, share: float,
           order: list[str] | None) -> str:
    """The next kill's target: the next of ``order`` when given; else the cold start while it is ahead and has had
    fewer than its ``share`` of the kills (once a checkpoint exists it is behind the run for good); else the least
    aimed-at reachable one (ties: in ``run_type.targets``' order)."""
    if order:
        return order.pop(0)
    options = reachable(run_type, resumed_from, steps)
    if COLD_START in options and aimed[COLD_START] < share:
        return COLD_START
    return min(options, key=lambda t: (aimed[t], options.index(t)))


def hunt(proc: Process, kill: Kill, run_type: RunType, overrides: tuple[str, ...], rng: random.Random,
         anywhere: float) -> bool:
    """Kill ``proc`` as ``kill.target`` says; True once killed (``kill`` then says where it landed), False if the
    run ended first. ``anywhere``: the window of ``ANYWHERE`` kills, in seconds after the start: the earliest
    kill so far that landed in an RL phase (a resumed run lasts that long at least), before any the time the
    reference took to publish its first checkpoint (which includes building the cache)."""
    if kill.target == ANYWHERE:
        delay = rng.uniform(0, anywhere)
        while proc.running() and proc.seconds() < delay:
            time.sleep(0.005)
        return land(proc, kill, run_type, proc.sample())
    ready = aim(proc.out, kill, run_type, overrides, rng)
    sightings, seen = rng.randint(1, SIGHTINGS[kill.target]), 0
    intervals = random.Random(rng.random())  # the plan's generator draws as often however many samples are taken
    while proc.running():
        time.sleep(intervals.uniform(*SAMPLE_INTERVAL))
        frames = proc.sample()
        if frames is not None and classify(frames, run_type.phases) == kill.target and ready():
            seen += 1
            if seen == sightings:
                return land(proc, kill, run_type, frames)
    return False


def aim(out: Path, kill: Kill, run_type: RunType, overrides: tuple[str, ...], rng: random.Random):
    """Pick the step a kill aimed at a phase aims at (``kill.step`` names it); returns the test that the run has
    reached it, asked when a sample shows the phase. Cold start: one of its SFT steps (the log the cold start
    writes has as many lines as steps done; the sample shows that the resumed run has emptied it). RL phases: one
    of the ``MAX_SKIP + 1`` steps after the checkpoint resumed from (the checkpoint before it is published)."""
    if kill.target == COLD_START:
        key, log = run_type.cold_start
        done = rng.randint(0, run_type.setting(key, overrides) - 1)
        kill.step = f"SFT {done + 1}"
        return lambda: done == 0 or (out / log).exists() and (out / log).read_text().count("\n") >= done
    steps = run_type.setting(run_type.steps_key, overrides)
    skip = rng.randint(0, min(MAX_SKIP, steps - kill.resumed_from - 1))
    kill.step = f"RL {kill.resumed_from + skip + 1}"
    return lambda: published(out, kill.resumed_from + skip)


def land(proc: Process, kill: Kill, run_type: RunType, frames) -> bool:
    """SIGKILL ``proc`` now; record the phase its last stack sample (``frames``; None: not sampled) showed."""
    if not proc.running():
        return False
    kill.seconds = proc.seconds()
    rc = proc.kill()
    if rc != -signal.SIGKILL:  # it ended by itself in the meantime
        return False
    kill.landed = STARTUP if frames is None else classify(frames, run_type.phases)
    kill.where = "-" if frames is None else innermost_mmrl(frames)
    return True


def finished(proc: Process, log: Path, timeout: float = 900.0) -> None:
    """Wait for ``proc`` to end; ``RuntimeError`` with its log's tail unless it ended well."""
    try:
        rc = proc.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    if rc != 0 and not (rc == -signal.SIGUSR1 and proc.done.exists()):  # a last sample after mmrl returned
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{log.stem} ended with {rc}:\n{tail}")


def reference_run(run_type: RunType, out: Path, cache: Path, overrides: tuple[str, ...], logs: Path) -> float:
    """Run the reference straight through (``python -m mmrl``); returns the seconds it took to publish its first
    checkpoint."""
    argv = [sys.executable, "-m", "mmrl", *run_type.argv(out, cache, False, overrides)]
    began, first = time.monotonic(), None
    with open(logs / "reference.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if first is None and published(out, 1):
                first = time.monotonic() - began
            time.sleep(0.01)
    if proc.returncode != 0:
        tail = "\n".join((logs / "reference.log").read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"the reference run failed ({proc.returncode}):\n{tail}")
    return first if first is not None else time.monotonic() - began


def campaign(run_type: RunType, workdir: Path, cache: Path, kills: int, seed: int = 0,
             overrides: tuple[str, ...] = (), order: list[str] | None = None, echo=print) -> Outcome:
    """The reference run, then the same run killed ``kills`` times and resumed to its end, and the comparison
    (module docstring). ``order``: the targets of the kills in turn (default: ``choose``'s rotation)."""
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    reference, killed = workdir / "reference", workdir / "killed"
    outcome = Outcome(run_type.name, wanted=kills)
    began = time.monotonic()
    first_checkpoint = reference_run(run_type, reference, cache, overrides, logs)
    outcome.reference_seconds = time.monotonic() - began
    echo(f"{run_type.name}: reference run done in {outcome.reference_seconds:.1f} s")
    steps = run_type.setting(run_type.steps_key, overrides)
    rng = random.Random(f"{seed}-{run_type.name}")
    order = list(order) if order else None
    aimed: Counter = Counter()
    began = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        resumed_from = newest_checkpoint(killed) if killed.exists() else 0
        label = logs / f"attempt-{attempt:02d}"
        proc = Process(run_type.argv(killed, cache, attempt > 1, overrides), killed, label.with_suffix(".dump"),
                       label.with_suffix(".log"))
        if len(outcome.kills) == kills:
            finished(proc, label.with_suffix(".log"))
            break
        target = choose(run_type, resumed_from, steps, aimed, kills / len(run_type.targets), order)
        kill = Kill(len(outcome.kills) + 1, target, resumed_from)
        aimed[kill.target] += 1
        anywhere = min([k.seconds for k in outcome.kills if k.landed in RL_PHASES], default=first_checkpoint)
        if not hunt(proc, kill, run_type, overrides, rng, anywhere):
            finished(proc, label.with_suffix(".log"))
            break
        outcome.kills.append(kill)
        echo(f"{run_type.name}: kill {kill.number} aimed at {kill.target} (step {kill.step}), landed in "
             f"{kill.landed} ({kill.where}) {kill.seconds:.2f} s after start, resumed from step {resumed_from}")
    outcome.campaign_seconds = time.monotonic() - began
    if len(outcome.kills) < kills:
        outcome.problems.append(f"the run ended after {len(outcome.kills)} of {kills} kills")
    outcome.checks = compare(reference, killed, run_type)
    outcome.problems += [f"{name}: {result}" for name, result in outcome.checks.items() if result != "equal"]
    return outcome


# -------------------------------------------------------------------------------------------- the comparison


def files(root: Path) -> dict[str, Path]:
    """Every file under ``root``, hidden ones too, by its POSIX path relative to ``root``."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def read_log(path: Path) -> list[dict]:
    """The records of a JSON-lines log; ``ValueError`` for a line that is not JSON or a last line without its
    newline."""
    text = path.read_text() if path.exists() else ""
    if text and not text.endswith("\n"):
        raise ValueError("the last line is unfinished")
    return [json.loads(line) for line in text.splitlines()]


def log_difference(reference: Path, run: Path) -> str:
    """``equal`` when the log ``run`` has the reference's steps, each once and in order, with equal values in every
    field but ``WALL_CLOCK``; else the first difference."""
    try:
        want, got = read_log(reference), read_log(run)
    except ValueError as e:
        return f"unreadable: {e}"
    steps_want, steps_got = [r["step"] for r in want], [r["step"] for r in got]
    if steps_got != steps_want:
        twice = sorted(s for s, n in Counter(steps_got).items() if n > 1)
        missing = sorted(set(steps_want) - set(steps_got))
        line = next(i for i, (a, b) in enumerate(zip([*steps_got, None], [*steps_want, None]), 1) if a != b)
        return (f"{len(steps_got)} lines for {len(steps_want)} steps, the first out of place is line {line}; "
                f"steps more than once: {twice[:5]}, missing: {missing[:5]}")
    for a, b in zip(want, got):
        differ = sorted(k for k in set(a) | set(b) if k not in WALL_CLOCK and a.get(k) != b.get(k))
        if differ:
            k = differ[0]
            return f"step {a['step']}: {len(differ)} fields differ, e.g. {k}: {b.get(k)!r} instead of {a.get(k)!r}"
    return "equal" if want else "empty in both runs"


def tree_difference(reference: Path, run: Path) -> str:
    """``equal`` when folder ``run`` holds the reference's files (names and bytes)."""
    want, got = files(reference), files(run)
    if want.keys() != got.keys():
        return f"extra {sorted(got.keys() - want.keys())[:3]}, missing {sorted(want.keys() - got.keys())[:3]}"
    differ = [name for name in want if want[name].read_bytes() != got[name].read_bytes()]
    if differ:
        return f"{len(differ)} of {len(want)} files differ, e.g. {differ[0]}"
    return "equal" if want else "empty in both runs"


def json_difference(reference: Path, run: Path) -> str:
    """``equal`` when the JSON files are equal but for ``PATH_KEYS``."""
    if not run.exists():
        return "missing"
    want, got = (json.loads(p.read_text()) for p in (reference, run))
    differ = sorted(k for k in set(want) | set(got) if k not in PATH_KEYS and want.get(k) != got.get(k))
    return f"differs in {differ}" if differ else "equal"


def compare(reference: Path, run: Path, run_type: RunType) -> dict[str, str]:
    """Each check's outcome (``equal`` or the first difference), by the file or folder it compares."""
    checks = {name: log_difference(reference / name, run / name) for name in run_type.logs}
    checks |= {f"{name}/": tree_difference(reference / name, run / name) for name in run_type.trees}
    checks |= {name: json_difference(reference / name, run / name) for name in run_type.records}
    listed = [{p.relative_to(root).as_posix() + "/" * p.is_dir() for p in root.rglob("*")} for root in (reference, run)]
    listed = [{k for k in names if not k.startswith("tb/")} for names in listed]
    extra, missing = sorted(listed[1] - listed[0]), sorted(listed[0] - listed[1])
    checks["run directory (tb/ aside)"] = f"extra {extra[:3]}, missing {missing[:3]}" if extra or missing else "equal"
    return checks


# ------------------------------------------------------------------------------------------------ the report


def report(outcomes: list[Outcome]) -> str:
    """The kills, then the checks (a row per check, a column per run type), in Markdown."""
    lines = ["| run | kill | aimed at | step aimed at | landed in | innermost mmrl frame | resumed from step | "
             "s after start |", "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        lines += [f"| {o.run_type} | {k.number} | {k.target} | {k.step} | {k.landed} | `{k.where}` | "
                  f"{k.resumed_from} | {k.seconds:.2f} |" for k in o.kills]
    names = list(dict.fromkeys(name for o in outcomes for name in o.checks))
    lines += ["", "| check | " + " | ".join(o.run_type for o in outcomes) + " |", "|---|" + "---|" * len(outcomes)]
    lines += [f"| {name} | " + " | ".join(o.checks.get(name, "n/a") for o in outcomes) + " |" for name in names]
    lines += ["| kills | " + " | ".join(f"{len(o.kills)} of {o.wanted}" for o in outcomes) + " |",
              "| phases landed in | " + " | ".join(", ".join(f"{p} {n}" for p, n in sorted(Counter(
                  k.landed for k in o.kills).items())) for o in outcomes) + " |",
              "| seconds: reference, killed-and-resumed | " + " | ".join(
                  f"{o.reference_seconds:.0f}, {o.campaign_seconds:.0f}" for o in outcomes) + " |",
              "| verdict | " + " | ".join("OK" if o.ok else "DIFFERENT" for o in outcomes) + " |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(RUN_TYPES), choices=list(RUN_TYPES))
    parser.add_argument("--kills", type=int, default=10, help="kills per run type (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder, deleted)")
    parser.add_argument("--cache", help="mmrl's cache (tiny models, data; default: WORKDIR/cache)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or scratch)
        cache = Path(args.cache) if args.cache else workdir / "cache"
        outcomes = [campaign(RUN_TYPES[name], workdir / name, cache, args.kills, args.seed) for name in args.runs]
    print(report(outcomes))
    for o in outcomes:
        for problem in o.problems:
            print(f"{o.run_type}: DIFFERENT: {problem}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[4:])
    else:
        sys.exit(main())
