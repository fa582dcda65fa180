"""The long-lived worker of ``mmrl.sandbox``: imports the heavy modules once, then forks a fresh child per script.

It runs as a plain script (``python -I -B sandbox_worker.py``) inside the sandbox, so it imports only the standard
library and never ``mmrl``. It talks to the parent over fds 0/1 in frames (4-byte big-endian length, then JSON),
after moving those fds out of reach of its children. Per job:

1. parent -> worker ``{"code", "prepare", "collect", "measure", "limits"}``; the worker empties ``/tmp``, makes
   the job's directory and forks the **script child**: new session, own uid where the worker may change it,
   rlimits (address space, CPU seconds, file size, processes, open files), stdin ``/dev/null``, stdout/stderr to
   files in the job directory, every other fd closed, a minimal environment; it runs the script, then the
   trusted ``collect(globals)``, and writes ``b"K" + bytes`` (or ``b"E" + reason``) to a pipe.
2. When the job has a ``measure`` step the worker asks ``{"need": "args"}`` and only then receives the arguments
   (a reference solid, say) — the script child was forked before they existed, so no script can read them. A
   fresh **measure child** (same limits) computes ``measure(collected, **args)`` from the untrusted bytes alone.
3. After each child the worker (the pid namespace's init under bubblewrap) kills every other process of the
   namespace, so no grandchild, daemon or fork bomb outlives the job, and answers ``{"ok", "value", "reason",
   "stdout", "stderr", "seconds"}``.
"""
from __future__ import annotations

import builtins
import errno
import importlib
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback

NOBODY = 65534
TAIL = 4096
"""Bytes of a script's stdout and stderr sent back."""
MAX_COLLECTED = 64 << 20
"""Largest result a script child may hand back (bytes)."""


def read_frame(fd: int, deadline: float | None = None) -> bytearray | None:
    """One length-prefixed frame from ``fd``; None at end of file, or when ``deadline`` (``time.monotonic()``)
    passes first. The worker reads without a deadline; the parent (``mmrl.sandbox``) with one."""
    head = _read_exact(fd, 4, deadline)
    return None if head is None else _read_exact(fd, struct.unpack(">I", head)[0], deadline)


def _read_exact(fd: int, n: int, deadline: float | None) -> bytearray | None:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def write_frame(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def resolve(name: str):
    """The callable named ``"module:function"``."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


# -- the child processes --------------------------------------------------------------------------------------------
def enter_child(jobdir: str, limits: dict, drop_uid: bool, keep_fd: int) -> None:
    """Everything a child does before running code: session, uid, cwd, fds, environment, limits."""
    os.setsid()
    if drop_uid:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    os.chdir(jobdir)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        out = os.open(os.path.join(jobdir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, fd)
        os.close(out)
    os.close(null)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": jobdir, "TMPDIR": jobdir, "LANG": "C.UTF-8"})
    set_limits(limits)


def set_limits(limits: dict) -> None:
    """Address space (above what the process already maps), CPU seconds (SIGXCPU, then SIGKILL a second later),
    file size, processes, open files; no core dumps."""
    mapped = _mapped_bytes()
    cpu = int(limits["cpu_s"])
    for which, value in ((resource.RLIMIT_AS, mapped + int(limits["memory_mb"]) * 2**20),
                         (resource.RLIMIT_CPU, (cpu, cpu + 1)),
                         (resource.RLIMIT_FSIZE, int(limits["file_mb"]) * 2**20),
                         (resource.RLIMIT_NPROC, int(limits["processes"])),
                         (resource.RLIMIT_NOFILE, int(limits["open_files"])),
                         (resource.RLIMIT_CORE, 0)):
        soft, hard = value if isinstance(value, tuple) else (value, value)
        resource.setrlimit(which, (soft, hard))


def _mapped_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _reply(fd: int, tag: bytes, data: bytes) -> None:
    """``tag`` (K: result, E: failure reason, closed by a NUL) and ``data`` on the result pipe."""
    try:
        view = memoryview(tag + data + (b"\x00" if tag == b"E" else b""))
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001  (a full disk or a replaced stream must not stop the exit)
            pass
    os._exit(code)


def _limit_hint(exc: BaseException, limits: dict) -> str:
    """Which limit an exception most likely comes from, for the failure reason."""
    if isinstance(exc, MemoryError):
        return f" (memory limit {limits['memory_mb']} MB)"
    if isinstance(exc, BlockingIOError):
        return f" (process limit {limits['processes']})"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:  # Python ignores SIGXFSZ: the write fails instead
        return f" (file size limit {limits['file_mb']} MB)"
    return ""


def script_child(fd: int, job: dict) -> None:
    """Run the untrusted script, then the trusted collector on its globals; reply on ``fd``."""
    scope = resolve(job["prepare"])() if job.get("prepare") else {"__name__": "__main__"}
    scope["__builtins__"] = builtins
    try:
        exec(compile(job["code"], "<script>", "exec"), scope)  # noqa: S102  (this is the sandbox)
    except BaseException as exc:  # noqa: BLE001  (SystemExit and KeyboardInterrupt are the script's failures too)
        traceback.print_exc()
        hint = _limit_hint(exc, job["limits"])
        _reply(fd, b"E", f"script raised {type(exc).__name__}: {str(exc)[:300]}{hint}".encode())
        _exit(1)
    try:
        out = resolve(job["collect"])(scope)
    except Exception as exc:  # noqa: BLE001
        _reply(fd, b"E", f"no result: {str(exc)[:300]}".encode())
        _exit(1)
    _reply(fd, b"K", out if isinstance(out, bytes) else str(out).encode())
    _exit(0)


def measure_child(fd: int, job: dict, collected: bytes, raw_args: bytearray) -> None:
    """The trusted measurement of the collected bytes, in a child that never ran the script."""
    try:
        value = resolve(job["measure"])(collected, **json.loads(bytes(raw_args)))
        _reply(fd, b"K", json.dumps(value).encode())
        _exit(0)
    except BaseException as exc:  # noqa: BLE001
        _reply(fd, b"E", f"{type(exc).__name__}: {str(exc)[:300]}".encode())
        _exit(1)


# -- running a child ------------------------------------------------------------------------------------------------
def run_child(body, jobdir: str, limits: dict, drop_uid: bool, init: bool) -> tuple[bytes | None, str]:
    """Fork, run ``body(fd)`` in the child, and collect its reply within the wall-clock limit:
    ``(payload, "")`` on success, ``(None, reason)`` otherwise. Every process the child left is then killed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            enter_child(jobdir, limits, drop_uid, w)
            body(w)
        finally:
            os._exit(70)
    os.close(w)
    os.set_blocking(r, False)
    deadline = time.monotonic() + float(limits["timeout_s"])
    data, status, reason = bytearray(), None, ""
    open_pipe = True
    while status is None:
        left = deadline - time.monotonic()
        if left <= 0:
            reason = f"timed out after {float(limits['timeout_s']):g} s (wall clock)"
            break
        if open_pipe and select.select([r], [], [], min(left, 0.02))[0]:
            open_pipe = _drain(r, data)
        elif not open_pipe:
            time.sleep(min(left, 0.002))
        if len(data) > MAX_COLLECTED:
            reason = f"result larger than {MAX_COLLECTED >> 20} MB"
            break
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            _drain(r, data)
    kill_all(pid, init)
    os.close(r)
    if reason:
        return None, reason
    if data[:1] == b"K" and os.waitstatus_to_exitcode(status) == 0:
        return bytes(data[1:]), ""
    if data[:1] == b"E":  # a script that forked may have several children writing: keep the first words
        return None, data[1:].decode(errors="replace").split("\x00")[0][:500]
    return None, exit_reason(status, limits)


def _drain(fd: int, data: bytearray) -> bool:
    """Read what ``fd`` holds now into ``data``; False at end of file."""
    while len(data) <= MAX_COLLECTED:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        data += chunk
    return True


def exit_reason(status: int, limits: dict) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with status {code} before handing back a result"
    sig = signal.Signals(-code)
    named = {signal.SIGXCPU: f"CPU time limit of {limits['cpu_s']} s reached",
             signal.SIGXFSZ: f"file size limit of {limits['file_mb']} MB reached"}
    return named.get(sig, f"killed by {sig.name}")


def kill_all(pid: int, init: bool) -> None:
    """End the child and everything it started. As the pid namespace's init, ``kill(-1)`` reaches every other
    process of the namespace (daemonised grandchildren included) and none outside it; without a namespace
    (``unsafe_local``) only the child's process group can be reached."""
    try:
        if init:
            os.kill(-1, signal.SIGKILL)
        else:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    try:  # reap the rest (as init, every orphan of the namespace is this process's child)
        while os.waitpid(-1, 0 if init else os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - TAIL))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def fresh_jobdir(scratch: str, drop_uid: bool) -> str:
    """Empty ``scratch`` (``/tmp`` in the sandbox) and ``/dev/shm`` of what a previous script left, and make the
    new job's own directory there."""
    for folder in (scratch, "/dev/shm") if scratch == "/tmp" else (scratch,):
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
    jobdir = os.path.join(scratch, "job")
    os.mkdir(jobdir, 0o700)
    if drop_uid:
        os.chown(jobdir, NOBODY, NOBODY)
    return jobdir


def run_job(job: dict, proto_in: int, proto_out: int, config: dict) -> dict:
    started = time.monotonic()
    drop_uid, init = config["drop_uid"], config["init"]
    jobdir = fresh_jobdir(config["scratch"], drop_uid)
    limits = job["limits"]
    collected, reason = run_child(lambda fd: script_child(fd, job), jobdir, limits, drop_uid, init)
    out, err = tail(os.path.join(jobdir, "stdout")), tail(os.path.join(jobdir, "stderr"))
    value = None
    if collected is not None and job.get("measure"):
        write_frame(proto_out, {"need": "args"})
        raw = read_frame(proto_in)
        if raw is None:
            sys.exit(0)
        value_bytes, reason = run_child(lambda fd: measure_child(fd, job, collected, raw), jobdir, limits,
                                        drop_uid, init)
        raw[:] = bytes(len(raw))  # the arguments (a reference answer) do not stay in the worker's memory
        if value_bytes is not None:
            value = json.loads(value_bytes)
    elif collected is not None:
        value = {"collected": collected.decode(errors="replace")}
    return {"ok": value is not None, "value": value, "reason": "" if value is not None else reason,
            "stdout": out, "stderr": err, "seconds": time.monotonic() - started}


def main() -> None:
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    config = json.loads(bytes(read_frame(proto_in)))
    sys.path[:0] = config["paths"]
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        for module in config["modules"]:
            importlib.import_module(module)
    except BaseException as exc:  # noqa: BLE001
        write_frame(proto_out, {"ready": False, "error": f"importing {module}: {type(exc).__name__}: {exc}"})
        return
    write_frame(proto_out, {"ready": True})
    quiet = os.open(os.devnull, os.O_WRONLY)  # nothing the worker prints later can fill the parent's pipe
    os.dup2(quiet, 2)
    os.close(quiet)
    while (frame := read_frame(proto_in)) is not None:
        write_frame(proto_out, run_job(json.loads(bytes(frame)), proto_in, proto_out, config))


if __name__ == "__main__":
    main()
