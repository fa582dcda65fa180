"""Running untrusted code (model-written scripts) isolated from the host, fast enough to be a reward.

A ``Sandbox`` keeps a pool of long-lived workers (``mmrl.sandbox_worker``), each started once inside bubblewrap
(``bwrap``, Debian package ``bubblewrap``) with the heavy modules imported (CadQuery: ~1.4 s), and forks a fresh
child per script, so a script costs milliseconds of overhead instead of an interpreter start. What holds:

- **filesystem**: only the system directories (``/usr``, the ``/lib*`` links, a few files of ``/etc``), the Python
  installation and the named packages are visible, read-only; ``/tmp`` is a private size-limited tmpfs, emptied
  before each script; the home directory, the project tree and everything else of the host do not exist inside;
- **network**: a network namespace of its own (only its own loopback: nothing on the host is reachable);
- **processes**: a pid namespace whose init is the worker; after each script the worker kills every other
  process of the namespace, so nothing a script starts (daemons, fork bombs) outlives it; the worker cannot be
  signalled by the scripts (the namespace's init), and bubblewrap dies with the parent (``--die-with-parent``);
- **identity and environment**: a cleared environment (``PATH``, ``HOME``/``TMPDIR`` = the script's directory,
  ``LANG``); when the parent is root, each script child runs as ``nobody`` (so the process limit counts and no
  root-owned file is readable); otherwise in a user namespace as the calling user; no inherited file
  descriptors;
- **limits** (``Limits``): wall clock, CPU seconds, address space, file size, processes, open files;
- **results as data**: every message is JSON (the parent never unpickles anything a worker sends); a job's
  ``measure`` step runs in a second fresh child that never ran the script and receives its arguments (a reference
  answer) only after the script's child is gone.

Without bubblewrap a ``Sandbox`` refuses to start unless ``mode="unsafe_local"`` is given, which keeps the limits
and the timeout but loses the isolation (``UNSAFE_LOCAL_LOSES``).
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmrl.errors import ConfigError, MMRLError
from mmrl.sandbox_worker import read_frame, write_frame

MODES = ("bwrap", "unsafe_local")
UNSAFE_LOCAL_LOSES = ("sandbox: unsafe_local runs model-written code WITHOUT isolation: it can read your files and "
                      "environment variables (secrets included), reach the network, write wherever you can and leave "
                      "processes behind; only the time, memory, CPU, file-size and process limits still apply")
WORKER = Path(__file__).with_name("sandbox_worker.py")
INSIDE = "/opt/mmrl-sandbox"
"""Where the worker script and the named packages appear inside the sandbox."""
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime",
             "/etc/passwd", "/etc/group", "/etc/fonts")
"""The parts of ``/etc`` a Python process reads (the dynamic linker's cache, links of ``/usr/bin``, fonts)."""
PASS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
"""Host variables passed in (they keep some CPUs' OpenBLAS from crashing); everything else is cleared."""


class SandboxError(MMRLError):
    """The sandbox cannot start (bubblewrap missing or failing, a module that does not import)."""


@dataclass
class Limits:
    """Per-script limits; a script that reaches one fails with the reason (its reward is 0)."""

    timeout_s: float = 10.0
    """Wall clock per step (the script; the measurement gets as long again)."""
    cpu_s: int = 10
    """CPU seconds (SIGXCPU, SIGKILL a second later)."""
    memory_mb: int = 1024
    """Address space a script may add to what the worker already maps (the imported modules)."""
    file_mb: int = 16
    """Largest file a script may write (its stdout and stderr are files)."""
    processes: int = 16
    """Processes of the script's user (a fork bomb stops here)."""
    open_files: int = 64
    tmp_mb: int = 256
    """Size of the private ``/tmp`` (bubblewrap only)."""


@dataclass
class Job:
    """One script to run. Functions are named ``"module:function"`` and must be importable in the worker (a module
    of ``Sandbox(modules=...)`` or of its ``packages``)."""

    code: str
    collect: str
    """``collect(globals) -> bytes | str``: the script's result, read from its globals after it ran."""
    prepare: str | None = None
    """``prepare() -> dict``: extra globals the script starts with (e.g. ``show_object``)."""
    measure: str | None = None
    """``measure(collected: bytes, **args) -> dict``: the result's measurement, in a child that never ran the
    script; without it the value is ``{"collected": text}``."""
    args: dict[str, Any] = field(default_factory=dict)
    """JSON keyword arguments of ``measure``."""


@dataclass
class Result:
    ok: bool
    value: dict[str, Any] | None
    """What ``measure`` returned (or ``{"collected": text}``); None when the job failed."""
    reason: str
    """Why it failed ("" when ok): the script's exception, a limit reached, a timeout, no result."""
    stdout: str = ""
    """The last 4 KB the script printed."""
    stderr: str = ""
    seconds: float = 0.0


def available() -> bool:
    """Whether bubblewrap is installed."""
    return shutil.which("bwrap") is not None


def check_mode(mode: str, key: str = "sandbox") -> str:
    if mode not in MODES:
        raise ConfigError(f"config key {key!r}: unknown sandbox {mode!r}; valid: {', '.join(MODES)}")
    return mode


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SandboxError(f"sandbox: {name!r} is not an importable package")
    return Path(list(spec.submodule_search_locations)[0])


def _python_dirs() -> list[str]:
    """The Python installation's folders outside ``/usr`` (a pyenv or conda prefix, a virtual environment)."""
    dirs = {sys.prefix, sys.base_prefix, str(Path(os.path.realpath(sys.executable)).parent.parent)}
    return sorted(d for d in dirs if not d.startswith("/usr/") and os.path.isdir(d))


def bwrap_command(packages: list[str], tmp_mb: int, as_root: bool) -> list[str]:
    """The bubblewrap command line of one worker."""
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--as-pid-1", "--unshare-pid", "--unshare-net",
           "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--clearenv"]
    if as_root:  # the worker may switch each child to nobody and signal it; nothing else
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_KILL"]
    else:
        cmd += ["--unshare-user"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    for path in ETC_FILES:
        cmd += ["--ro-bind-try", path, path]
    for path in _python_dirs():
        cmd += [*_parents(path), "--ro-bind", path, path]
    for name in packages:
        cmd += ["--ro-bind", str(_package_dir(name)), f"{INSIDE}/packages/{name}"]
    cmd += ["--ro-bind", str(WORKER), f"{INSIDE}/worker.py", "--dev", "/dev", "--proc", "/proc",
            "--size", str(tmp_mb << 20), "--tmpfs", "/tmp", "--chdir", "/tmp"]
    for key, value in _environment("/tmp").items():
        cmd += ["--setenv", key, value]
    return cmd + [sys.executable, "-I", "-B", f"{INSIDE}/worker.py"]


def _parents(path: str) -> list[str]:
    """Directories above a bind point, created world-readable (bubblewrap's own are root-only, and a script child
    runs as nobody)."""
    args = []
    for parent in reversed(Path(path).parents[:-1]):
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _environment(home: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return {**env, **{k: os.environ[k] for k in PASS_ENV if k in os.environ}}


def _receive(fd: int, deadline: float) -> dict:
    """The next frame from a worker, or ``SandboxError`` when it dies or stays silent past ``deadline``."""
    frame = read_frame(fd, deadline)
    if frame is None:
        raise SandboxError("the sandbox worker died or stopped answering")
    return json.loads(bytes(frame))


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, mode: str, modules: list[str], packages: list[str], limits: Limits):
        as_root = os.geteuid() == 0
        self.scratch = None
        if mode == "bwrap":
            cmd, env, cwd = bwrap_command(packages, limits.tmp_mb, as_root), {}, "/"
            config = {"paths": [f"{INSIDE}/packages"], "scratch": "/tmp", "init": True, "drop_uid": as_root}
        else:
            self.scratch = tempfile.mkdtemp(prefix="mmrl-sandbox-")
            cmd, env, cwd = [sys.executable, "-I", "-B", str(WORKER)], _environment(self.scratch), self.scratch
            paths = sorted({str(_package_dir(name).parent) for name in packages})
            config = {"paths": paths, "scratch": self.scratch, "init": False, "drop_uid": False}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=cwd, close_fds=True)
        write_frame(self.proc.stdin.fileno(), {**config, "modules": modules})

    def wait_ready(self, timeout: float) -> None:
        try:
            reply = _receive(self.proc.stdout.fileno(), time.monotonic() + timeout)
        except SandboxError:
            self.stop()
            err = self.proc.stderr.read().decode(errors="replace").strip()
            raise SandboxError(f"the sandbox worker did not start: {err or 'no answer'}") from None
        if not reply.get("ready"):
            self.stop()
            raise SandboxError(f"the sandbox worker did not start: {reply.get('error')}")

    def run(self, job: Job, limits: Limits) -> Result:
        """The job's result; ``SandboxError`` when the worker dies or hangs (it is then stopped)."""
        stage = limits.timeout_s + 10.0
        try:
            write_frame(self.proc.stdin.fileno(), {"code": job.code, "prepare": job.prepare, "collect": job.collect,
                                    "measure": job.measure, "limits": asdict(limits)})
            reply = _receive(self.proc.stdout.fileno(), time.monotonic() + stage)
            if reply.get("need") == "args":
                write_frame(self.proc.stdin.fileno(), job.args)
                reply = _receive(self.proc.stdout.fileno(), time.monotonic() + stage)
        except (OSError, ValueError, SandboxError) as exc:
            self.stop()
            raise SandboxError(str(exc)) from None
        return Result(**reply)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


class Sandbox:
    """A pool of sandboxed workers, each importing ``modules`` (from the Python installation or from ``packages``,
    which are made visible inside) once, before it forks its first child: import there everything a job loads
    lazily (a fork per script pays it again each time), but start no thread there (a child forked from a process
    with threads can deadlock on a lock one of them held). ``run_many`` spreads jobs over them (one job at a time
    per worker); a job that fails in any way gives a ``Result`` with ``ok=False`` and the reason, never an
    exception, and a worker that died is replaced.

    >>> with Sandbox(modules=["cadquery", "rewards.cad"], packages=["rewards"]) as box:   # doctest: +SKIP
    ...     results = box.run_many([Job(code, collect="rewards.cad:collect_solid")])
    """

    def __init__(self, modules: list[str] = (), packages: list[str] = (), limits: Limits | None = None,
                 workers: int | None = None, mode: str = "bwrap", start_timeout: float = 120.0):
        check_mode(mode)
        if mode == "bwrap" and not available():
            raise SandboxError("sandbox: bubblewrap (bwrap) is not installed, and model-written code runs only "
                               "isolated. Install it (Debian/Ubuntu: apt-get install bubblewrap; the project's "
                               ".ci/install-sandbox does) or set `sandbox: unsafe_local` to run it without "
                               f"isolation. What {UNSAFE_LOCAL_LOSES.split(' runs ', 1)[1]}")
        if mode == "unsafe_local":
            warnings.warn(UNSAFE_LOCAL_LOSES, stacklevel=2)
        self.mode, self.modules, self.packages = mode, list(modules), list(packages)
        self.limits = limits or Limits()
        self.start_timeout = start_timeout
        self.size = max(1, workers or os.cpu_count() or 1)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        started = [self._spawn() for _ in range(self.size)]
        try:
            for worker in started:
                worker.wait_ready(start_timeout)
                self._idle.put(worker)
        except SandboxError:
            self.close()
            raise
        self._finalizer = weakref.finalize(self, _stop_all, self._all)
        atexit.register(self._finalizer)

    def _spawn(self) -> _Worker:
        worker = _Worker(self.mode, self.modules, self.packages, self.limits)
        with self._lock:
            self._all.append(worker)
        return worker

    def run(self, job: Job) -> Result:
        """Run one job on the next free worker."""
        worker = self._idle.get()
        started = time.monotonic()
        try:
            return worker.run(job, self.limits)
        except SandboxError as exc:
            return Result(False, None, f"sandbox worker lost ({exc}); it was restarted",
                          seconds=time.monotonic() - started)
        finally:
            if not worker.alive():
                worker = self._replace(worker)
            self._idle.put(worker)

    def _replace(self, dead: _Worker) -> _Worker:
        dead.stop()
        with self._lock:
            self._all.remove(dead)
        fresh = self._spawn()
        fresh.wait_ready(self.start_timeout)
        return fresh

    def run_many(self, jobs: list[Job]) -> list[Result]:
        """Every job's result, in order, spread over the workers."""
        if len(jobs) <= 1 or self.size == 1:
            return [self.run(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.run, jobs))

    def close(self) -> None:
        _stop_all(self._all)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in list(workers):
        worker.stop()
    workers.clear()
