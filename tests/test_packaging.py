"""Packaging: the shipped default configs (``configs/`` installed as ``mmrl_configs``) and a wheel that trains.

The slow test builds a wheel of the checkout, installs it (not editable) into a fresh virtual environment that
borrows torch & co. from the system site-packages, and runs ``mmrl train gui_grounding`` from a folder outside the
checkout: the defaults must come from the wheel, not from a ``configs/`` folder nearby.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmrl.cli import main
from mmrl.config import default_config, shipped_data
from mmrl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_explicit_package_list_covers_every_code_folder():
    """pyproject.toml lists the packages (the ``configs`` mapping needs it): a new code folder must be added."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(REPO).parts)
               for top in ("mmrl", "tasks", "rewards") for p in (REPO / top).glob("**/*.py")}
    assert set(setuptools["packages"]) == folders | {"mmrl_configs", "mmrl_data"}
    assert setuptools["package-dir"] == {"mmrl_configs": "configs", "mmrl_data": "data"}


def test_default_configs_come_from_the_package_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "gui_grounding").mkdir(parents=True)
    (tmp_path / "configs" / "gui_grounding" / "tiny.yaml").write_text("seed: 1\n")  # not read
    assert default_config("gui_grounding") == REPO / "configs" / "gui_grounding" / "tiny.yaml"
    assert default_config("ddpo", diffusion=True) == REPO / "configs" / "diffusion" / "ddpo" / "tiny.yaml"


def test_shipped_data_comes_from_the_package_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "geneval").mkdir(parents=True)
    (tmp_path / "data" / "geneval" / "evaluation_metadata.jsonl").write_text("{}\n")  # not read
    assert shipped_data("geneval/evaluation_metadata.jsonl") == REPO / "data" / "geneval" / "evaluation_metadata.jsonl"
    with pytest.raises(ConfigError, match="'geneval/nope.jsonl' is missing from the mmrl_data package"):
        shipped_data("geneval/nope.jsonl")


def test_missing_default_config_names_it_and_lists_the_shipped_ones():
    with pytest.raises(ConfigError) as e:
        default_config("nope")
    shipped = "cad_code, caption_qa, detection, gui_grounding, rec, temporal_grounding;"
    assert "task 'nope'" in str(e.value) and shipped in str(e.value)
    with pytest.raises(ConfigError) as e:
        default_config("nope", diffusion=True)
    assert "diffusion algorithm 'nope'" in str(e.value) and "alignprop, awm, ddpo, flow_grpo;" in str(e.value)


@pytest.mark.parametrize("args", [["train", "nope"], ["diffusion", "train", "nope"]], ids=["task", "diffusion"])
def test_cli_without_a_default_config(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'nope'" in err
    assert ("ddpo" if "diffusion" in args else "gui_grounding") in err


# ---------------------------------------------------------------- the wheel

IGNORED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs",
                                 ".whl", ".gl", "test-artifacts")

WHERE = """
import json, sysconfig
import mmrl, tasks
from mmrl.config import default_config, shipped_data
print(json.dumps({"site": sysconfig.get_paths()["purelib"], "mmrl": mmrl.__file__, "tasks": tasks.__file__,
                  "task": str(default_config("gui_grounding")),
                  "diffusion": str(default_config("ddpo", diffusion=True)),
                  "geneval": str(shipped_data("geneval/evaluation_metadata.jsonl"))}))
"""


def check(cmd: list, cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtual environment with mmrl installed from a freshly built wheel (torch etc. from the system)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: a stale build/ folder in the checkout could leak deleted modules
    shutil.copytree(REPO, src, ignore=IGNORED)
    check([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
           "-w", tmp / "dist", src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("mmrl-*.whl")
    env = tmp / "venv"
    # Without its own pip (and the old setuptools that comes with it): the system's pip installs into the venv.
    check([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env], cwd=tmp)
    # --ignore-installed: the checkout's editable install is visible through the system site-packages.
    check([env / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
           wheel], cwd=tmp)
    return env


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.mark.slow
def test_wheel_trains_from_any_directory_with_its_own_configs(venv, tiny_cache, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = json.loads(check([venv / "bin" / "python", "-c", WHERE], cwd=work, env=clean_env()))
    site = Path(where.pop("site"))
    assert site.is_relative_to(venv)
    for name, path in where.items():
        assert Path(path).is_relative_to(site), f"{name} comes from {path}, not the wheel in {site}"
    assert where["task"].endswith("mmrl_configs/gui_grounding/tiny.yaml")
    assert where["diffusion"].endswith("mmrl_configs/diffusion/ddpo/tiny.yaml")
    assert where["geneval"].endswith("mmrl_data/geneval/evaluation_metadata.jsonl")
    assert Path(where["geneval"]).read_bytes() == (REPO / "data" / "geneval" / "evaluation_metadata.jsonl").read_bytes()

    out = tmp_path / "x"
    check([venv / "bin" / "mmrl", "train", "gui_grounding", "grpo.steps=2", "sft.steps=2", f"output_dir={out}",
           f"model.cache_dir={tiny_cache}", "progress=false", "data.synthetic.n_train=16",
           "data.synthetic.n_eval=4", "sft.batch_size=4", "grpo.prompts_per_step=2", "grpo.group_size=4",
           "grpo.max_new_tokens=6", "grpo.micro_batch_size=4", "eval.max_new_tokens=6", "eval.batch_size=4"],
          cwd=work, env=clean_env())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after"]["n"] == 4
