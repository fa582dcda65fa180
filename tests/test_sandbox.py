"""The sandbox against hostile scripts: each attack is contained, scores a failure with a reason (or runs harmlessly
inside), and the next job still runs.

The checks look from the host: files the scripts tried to write, a TCP server's accept log, the host's process
table (every script tags the processes it starts with a marker in their command line), secrets planted in the
environment and in a home directory.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from mmrl.errors import ConfigError
from mmrl.sandbox import Job, Limits, Sandbox, SandboxError, available, check_mode

needs_bwrap = pytest.mark.skipif(not available(),
                                 reason="bubblewrap is not installed (.ci/install-sandbox installs it)")

PROBE = '''
import json

def collect(scope):
    """The script's ``found`` variable (whatever it managed to read), as text."""
    return json.dumps(scope.get("found", None), default=str)

def measure(collected, **args):
    return {"collected": json.loads(collected), "args": args}
'''
SECRET = "s3cr3t-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def probe_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    (root / "sandbox_probe").mkdir()
    (root / "sandbox_probe" / "__init__.py").write_text(PROBE)
    sys.path.insert(0, str(root))
    yield "sandbox_probe"
    sys.path.remove(str(root))


LIMITS = Limits(timeout_s=3.0, cpu_s=2, memory_mb=256, file_mb=4, processes=12, open_files=64, tmp_mb=64)


@pytest.fixture(scope="module")
def box(probe_package):
    with Sandbox(modules=[probe_package], packages=[probe_package], limits=LIMITS, workers=1) as sandbox:
        yield sandbox


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host folder to attack, a home with an SSH key and a secret in the environment."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(SECRET)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MMRL_TEST_TOKEN", SECRET)
    return tmp_path


def run(box: Sandbox, code: str, **job) -> object:
    return box.run(Job(textwrap.dedent(code), collect="sandbox_probe:collect", **job))


def surviving(marker: str) -> list[int]:
    """Host pids whose command line carries ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def assert_still_works(box: Sandbox) -> None:
    result = run(box, "found = 6 * 7")
    assert result.ok and result.value == {"collected": "42"}, result


@needs_bwrap
def test_a_plain_script_runs_and_its_prints_come_back(box):
    result = run(box, "print('hello'); found = sum(range(10))")
    assert result.ok and result.value == {"collected": "45"} and result.stdout == "hello\n"


@needs_bwrap
def test_writes_outside_the_temp_dir_do_not_reach_the_host(box, host):
    targets = [host / "written.txt", Path.home() / "written.txt", Path(__file__).resolve().parents[1] / "pwned.txt",
               Path("/tmp") / f"mmrl-pwned-{uuid.uuid4().hex}"]
    code = f"""
        found = []
        for path in {[str(t) for t in targets]!r}:
            try:
                with open(path, "w") as f:
                    f.write("pwned")
                found.append(path)
            except OSError as e:
                pass
    """
    result = run(box, code)
    assert result.ok
    for target in targets:
        assert not target.exists(), target


@needs_bwrap
def test_secrets_are_not_visible_and_nothing_leaks_to_the_next_script(box, host):
    code = f"""
        import os, glob
        found = dict(os.environ)
        for path in [os.path.expanduser("~/.ssh/id_rsa"), {str(host / "home/.ssh/id_rsa")!r},
                     *glob.glob("/root/.ssh/*"), *glob.glob("/home/*/.ssh/*"), "/proc/1/environ"]:
            try:
                found[path] = open(path, "rb").read().decode(errors="replace")
            except OSError:
                pass
        for folder in ["/tmp", "/dev/shm", os.getcwd()]:
            try:
                with open(os.path.join(folder, "leak"), "w") as f:
                    f.write(repr(found))
            except OSError:
                pass
    """
    first = run(box, code)
    assert first.ok and SECRET not in repr(first.value) + first.stdout + first.stderr
    later = run(box, """
        import os
        found = [open(p).read() for p in ["/tmp/leak", "/dev/shm/leak", "/tmp/job/leak"] if os.path.exists(p)]
    """)
    assert later.ok and later.value == {"collected": "[]"}


@needs_bwrap
def test_no_connection_reaches_a_server_on_the_host_loopback(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                accepted.append(server.accept())
            except socket.timeout:
                continue

    listener = threading.Thread(target=accept)
    listener.start()
    result = run(box, f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"hello")
            found = "connected"
        except OSError as e:
            found = type(e).__name__
    """)
    listener.join()
    server.close()
    assert accepted == []
    assert result.ok and result.value["collected"] != '"connected"'


@needs_bwrap
def test_subprocesses_and_daemonised_grandchildren_do_not_outlive_the_script(box, host):
    marker = f"{uuid.uuid4().int % 10**6}.{uuid.uuid4().int % 997}"
    late = host / "late.txt"
    result = run(box, f"""
        import os, subprocess
        subprocess.Popen(["sleep", "{marker}"])
        if os.fork() == 0:          # the classic double fork: the grandchild is re-parented and in its own session
            os.setsid()
            if os.fork() == 0:
                os.execvp("sh", ["sh", "-c", "sleep {marker}; echo late > {late}", "{marker}"])
            os._exit(0)
        found = "started"
    """)
    assert result.ok
    assert surviving(marker) == []
    time.sleep(0.3)
    assert surviving(marker) == [] and not late.exists()


@needs_bwrap
@pytest.mark.parametrize("code, reason", [
    ("import os\nwhile True:\n    os.fork()", "process limit"),
    ("blocks = [bytearray(64 << 20) for _ in range(100)]", "memory limit"),
    ("while True:\n    pass", "CPU time limit"),
    ("import time\ntime.sleep(60)", "timed out"),
    ("import sys\nwhile True:\n    sys.stdout.write('x' * (1 << 20))", "file size limit"),
    ("import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):\n"
     "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass", "timed out"),
], ids=["fork-bomb", "memory-bomb", "cpu-loop", "sleep", "gigabytes-of-stdout", "ignores-signals"])
def test_bombs_and_loops_are_ended_by_the_limits_with_a_reason(box, code, reason):
    started = time.monotonic()
    result = run(box, code)
    assert not result.ok and result.value is None
    assert reason in result.reason, result.reason
    assert time.monotonic() - started < LIMITS.timeout_s + 2
    assert_still_works(box)


@needs_bwrap
@pytest.mark.parametrize("code", [
    "__import__('os').system('touch {target}')",
    "getattr(__builtins__, '__import__')('subprocess').run(['touch', '{target}'])",
    "import builtins\nbuiltins.__dict__['__import__']('os').open('{target}', 0o101)",
    "import ctypes\nctypes.CDLL(None).system(b'touch {target}')",
    "import pickle\npickle.loads(b\"cos\\nsystem\\n(S'touch {target}'\\ntR.\")",
    "import marshal, types\nexec(marshal.loads(marshal.dumps(compile(\"open('{target}', 'w')\", 's', 'exec'))))",
], ids=["__import__", "getattr-builtins", "builtins-dict", "ctypes", "pickle", "marshal"])
def test_reaching_os_through_the_back_doors_touches_nothing_on_the_host(box, host, code):
    target = host / "touched"
    run(box, code.format(target=target))
    assert not target.exists()
    assert_still_works(box)


@needs_bwrap
@pytest.mark.parametrize("code", [
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nfound = 1",
    "import os, signal\nos.kill(1, signal.SIGKILL)\nfound = 1",
    "import os, signal\nos.kill(-1, signal.SIGKILL)\nfound = 1",
], ids=["parent", "pid-1", "everyone"])
def test_killing_the_parent_fails_and_the_worker_goes_on(box, code):
    run(box, code)
    assert_still_works(box)


@needs_bwrap
def test_the_host_processes_are_not_visible(box):
    result = run(box, "import os\nfound = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())")
    assert result.ok and len(eval(result.value["collected"])) <= 3  # the worker and the script (and `ls`-free)


@needs_bwrap
def test_the_script_cannot_see_the_measure_arguments_and_measure_gets_them(box):
    """The reference answer reaches the worker only after the script's child is gone: a script searching its whole
    heap for it finds nothing, and the measure step receives it."""
    peek = textwrap.dedent("""
        import gc, re
        found = sorted({m for o in gc.get_objects() if isinstance(o, (str, bytes, dict, list, tuple))
                        for m in re.findall("s3cr3t-[0-9a-f]{32}", repr(o))})
    """)
    result = box.run(Job(peek, collect="sandbox_probe:collect", measure="sandbox_probe:measure",
                         args={"reference": SECRET}))
    assert result.ok and result.value == {"collected": [], "args": {"reference": SECRET}}


@needs_bwrap
def test_run_many_spreads_jobs_and_keeps_their_order(probe_package):
    with Sandbox(modules=[probe_package], packages=[probe_package], limits=LIMITS, workers=2) as sandbox:
        results = sandbox.run_many([Job(f"found = {i}", collect="sandbox_probe:collect") for i in range(20)]
                                   + [Job("raise ValueError('bad')", collect="sandbox_probe:collect")])
    assert [r.value["collected"] for r in results[:20]] == [str(i) for i in range(20)]
    assert not results[20].ok and results[20].reason.startswith("script raised ValueError: bad")


@needs_bwrap
def test_a_module_that_does_not_import_stops_the_start_with_its_name(probe_package):
    with pytest.raises(SandboxError, match="no_such_module"):
        Sandbox(modules=["no_such_module"], packages=[probe_package], workers=1)


def test_without_bubblewrap_it_refuses_and_says_what_unsafe_local_loses(monkeypatch):
    monkeypatch.setattr("mmrl.sandbox.shutil.which", lambda name: None)
    with pytest.raises(SandboxError, match="unsafe_local") as info:
        Sandbox(workers=1)
    assert "secrets" in str(info.value) and "apt-get install bubblewrap" in str(info.value)


def test_unsafe_local_keeps_the_limits_and_warns(probe_package):
    with pytest.warns(UserWarning, match="WITHOUT isolation"):
        sandbox = Sandbox(modules=[probe_package], packages=[probe_package], limits=LIMITS, workers=1,
                          mode="unsafe_local")
    with sandbox:
        assert_still_works(sandbox)
        slow = run(sandbox, "import time\ntime.sleep(60)")
        assert not slow.ok and "timed out" in slow.reason
        assert "MMRL_TEST_TOKEN" not in run(sandbox, "import os\nfound = sorted(os.environ)").value["collected"]


def test_an_unknown_mode_names_the_valid_ones():
    with pytest.raises(ConfigError, match="bwrap, unsafe_local"):
        check_mode("docker")


UNPRIVILEGED = '''
from mmrl.sandbox import Job, Limits, Sandbox
with Sandbox(["probe_nb"], ["probe_nb"], Limits(timeout_s=2, cpu_s=1, processes=8), workers=1) as box:
    print(box.run(Job("import os\\nfound = os.getuid()", "probe_nb:collect")).value["collected"])
    print(box.run(Job("import os\\nwhile True:\\n    os.fork()", "probe_nb:collect")).reason)
    print(box.run(Job("import os, signal\\nos.kill(os.getppid(), signal.SIGKILL)", "probe_nb:collect")).ok)
    print(box.run(Job("found = 5", "probe_nb:collect")).value["collected"])
'''


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or not shutil.which("setpriv"),
                    reason="needs root (to become nobody), setpriv and the system's /usr/bin/python3")
def test_an_unprivileged_user_gets_the_user_namespace_path():
    """Run by a user who is not root (here: nobody, with the system Python), the workers live in a user namespace
    of their own: the fork bomb still stops at the process limit and the worker survives being signalled."""
    root = Path(tempfile.mkdtemp(prefix="mmrl-nobody-"))  # pytest's tmp_path is private to root
    try:
        root.chmod(0o755)
        (root / "probe_nb").mkdir(mode=0o755)
        (root / "probe_nb" / "__init__.py").write_text(PROBE)
        (root / "probe_nb" / "__init__.py").chmod(0o644)
        # the checkout may sit under a folder only root can enter: nobody gets a copy of the modules involved
        source = Path(__file__).resolve().parents[1] / "mmrl"
        (root / "mmrl").mkdir(mode=0o755)
        for name in ("__init__.py", "errors.py", "sandbox.py", "sandbox_worker.py"):
            shutil.copy(source / name, root / "mmrl" / name)
            (root / "mmrl" / name).chmod(0o644)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "PYTHONPATH": str(root)}
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                              "-c", UNPRIVILEGED], capture_output=True, text=True, env=env, cwd=root, timeout=60)
    finally:
        shutil.rmtree(root)
    lines = out.stdout.splitlines()
    assert len(lines) == 4, out.stderr
    assert lines[0] == "65534" and "process limit" in lines[1] and lines[3] == "5"
