"""Plugins: the worked example of docs/extending.md as an installed distribution (a dist-info with entry points on
``sys.path``), listed by ``mmrl list`` and trained with its own task, reward and policy loss; the registry's
capability checks; a reward that raises on every call."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mmrl import plugins
from mmrl.config import TrainConfig, load_config
from mmrl.errors import ConfigError
from mmrl.plugins import POLICY_LOSSES, REGISTRIES, REWARDS, TASKS, TOKEN_WEIGHTS, Registry
from mmrl.trainer import train

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
PLUGIN_NAMES = {"task": "colour_name", "reward function": "brevity", "policy loss": "vanilla_pg"}


def write_plugin(root: Path) -> None:
    """The doc's plugin module and the dist-info ``pip install`` would write from the doc's pyproject.toml."""
    text = DOC.read_text()
    module = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    project = tomllib.loads(re.search(r"```toml\n(.*?)```", text, re.S).group(1))
    (root / "mmrl_colour_plugin.py").write_text(module)
    dist = project["project"]
    info = root / f"{dist['name'].replace('-', '_')}-{dist['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist['name']}\nVersion: {dist['version']}\n")
    points = dist["entry-points"]["mmrl.plugins"]
    (info / "entry_points.txt").write_text("[mmrl.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))


@pytest.fixture
def plugin(tmp_path):
    """The plugin installed on ``sys.path`` for this test, its registrations removed afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    write_plugin(root)
    sys.path.insert(0, str(root))
    plugins.reload_plugins()
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("mmrl_colour_plugin", None)
    for kind, name in PLUGIN_NAMES.items():
        REGISTRIES[kind].unregister(name)
    plugins.reload_plugins()


def test_plugin_entries_are_registered_with_their_origin(plugin):
    for kind, name in PLUGIN_NAMES.items():
        assert REGISTRIES[kind].entry(name).origin == "mmrl-colour-plugin"
    assert TASKS.entry("gui_grounding").origin == "mmrl"
    assert REWARDS.hyperparameters("brevity") == {"limit": (int, 8)}


def test_mmrl_list_shows_the_plugin_in_a_fresh_process(plugin):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "mmrl", "list", "task"], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout
    assert re.search(r"^  colour_name  \[mmrl-colour-plugin\]  keys: n_train=32, n_eval=9, size=56  "
                     r"\(renderer=plain benchmarks=\(\) exports=False\)$", out, re.M), out
    assert re.search(r"^  gui_grounding  \[mmrl\]  keys: train=None, eval=None, ", out, re.M), out
    listing = json.loads(subprocess.run([sys.executable, "-m", "mmrl", "list", "--json"], capture_output=True,
                                        text=True, env=env, timeout=300, check=True).stdout)
    assert set(listing) == set(REGISTRIES)
    brevity = next(r for r in listing["reward function"] if r["name"] == "brevity")
    assert brevity == {"name": "brevity", "origin": "mmrl-colour-plugin", "config_keys": {"limit": 8},
                       "capabilities": {}}
    apo = next(r for r in listing["policy loss"] if r["name"] == "apo")
    assert apo["origin"] == "mmrl" and apo["capabilities"] == {"needs_reference": True}


def test_two_steps_of_a_task_reward_and_loss_defined_only_in_the_plugin(plugin, tiny_cache, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(TrainConfig, None, [
        "task=colour_name", f"output_dir={out}", f"model.cache_dir={tiny_cache}", "progress=false",
        "model.min_pixels=3136", "model.max_pixels=3136", "data.n_train=8", "data.n_eval=3",
        "rewards.exact=1.0", "rewards.brevity=0.5", "reward_args.brevity.limit=6", "grpo.policy_loss=vanilla_pg",
        "sft.steps=2", "sft.batch_size=4", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4",
        "grpo.max_new_tokens=4", "grpo.micro_batch_size=8", "eval.max_new_tokens=4"])
    summary = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all({"reward/exact", "reward/brevity", "reward/exact/failures"} <= set(r) for r in rows)
    assert all(r["reward/brevity/failures"] == 0 for r in rows)
    assert summary["before"]["n"] == summary["after"]["n"] == 3 and "accuracy" in summary["after"]
    rollout = json.loads((out / "rollouts" / "step_000002.jsonl").read_text().splitlines()[0])
    assert rollout["fields"]["colour"] in ("blue", "green", "red")
    # brevity at limit 6, as logged: 1 up to 6 characters, falling to 0 at 12
    for text, value in zip(rollout["completions"], rollout["rewards"]["brevity"]):
        assert value == pytest.approx(max(0.0, min(1.0, 2 - len(text) / 6)))


def test_a_reward_that_always_raises_scores_zero_and_is_counted(tiny_run, tmp_path):
    @REWARDS.register("explodes")
    def explodes(completions, **_):
        raise RuntimeError("judge crashed")

    try:
        with pytest.warns(UserWarning, match="reward 'explodes' failed"):
            train(load_config(TrainConfig, None, [*tiny_run, "rewards.point=1.0", "rewards.explodes=1.0"]))
    finally:
        REWARDS.unregister("explodes")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reward/explodes/failures"] == 8  # 2 prompts x 4 completions, every one of them
        assert r["reward/explodes"] == 0 and r["reward/point/failures"] == 0
        assert r["reward/mean"] == pytest.approx(r["reward/point"])


def test_a_reward_returning_nan_or_too_few_values_scores_zero_per_completion():
    from mmrl.rollout.scoring import score
    from mmrl.types import Sample

    samples = [Sample(id=str(i), prompt="p", fields={"k": i}) for i in range(3)]
    rewards = {"nan": (lambda c, k: [1.0, float("nan"), "x"], 2.0), "short": (lambda c, k: [1.0], 1.0),
               "ok": (lambda c, k: [float(v) for v in k], 1.0)}
    with pytest.warns(UserWarning):
        s = score(rewards, ["a", "b", "c"], samples)
    assert s.components["nan"].tolist() == [1.0, 0.0, 0.0] and s.failures["nan"].tolist() == [0.0, 1.0, 1.0]
    assert s.components["short"].tolist() == [0.0, 0.0, 0.0] and s.failures["short"].tolist() == [1.0, 1.0, 1.0]
    assert s.total.tolist() == [2.0 + 0.0 + 0.0, 0.0 + 0.0 + 1.0, 0.0 + 0.0 + 2.0]


def test_a_slow_reward_times_out():
    import time

    from mmrl.rollout.scoring import call_reward

    with pytest.warns(UserWarning, match="no answer within 0.2 s"):
        values, failed = call_reward("slow_test", lambda c: time.sleep(5) or [1.0], ["a"], {}, timeout=0.2)
    assert values == [0.0] and failed == [True]


def test_unknown_reward_and_stray_reward_args_are_named():
    from mmrl.rollout.scoring import select_rewards

    with pytest.raises(ConfigError, match="unknown reward 'nope'.*valid: a"):
        select_rewards({"a": len}, {"nope": 1.0})
    with pytest.raises(ConfigError, match="reward_args.b"):
        select_rewards({"a": len}, {"a": 1.0}, {"b": {}})


def test_capabilities_are_declared_typed_and_read_strictly():
    reg = Registry("thing", capabilities={"fast": plugins.Capability(bool, False, "runs fast")})
    reg.register("a", fast=True)(lambda: 1)
    reg.register("b")(lambda: 2)
    assert (reg.capability("a", "fast"), reg.capability("b", "fast")) == (True, False)
    with pytest.raises(ConfigError, match="unknown capability 'fsat'"):
        reg.register("c", fsat=True)(lambda: 3)
    with pytest.raises(ConfigError, match="capability fast"):
        reg.register("d", fast="yes")(lambda: 4)
    with pytest.raises(KeyError, match="no capability 'fsat'"):
        reg.capability("a", "fsat")
    with pytest.raises(ConfigError, match="unknown thing 'z'; valid: a, b"):
        reg.get("z")
    assert TOKEN_WEIGHTS.capability("tw_grpo", "needs_whole_groups") is True
    assert POLICY_LOSSES.capability("ppo_clip", "needs_reference") is False


def test_a_broken_plugin_is_one_warning_and_the_rest_still_works(tmp_path):
    root = tmp_path / "site"
    info = root / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mmrl.plugins]\nbroken = broken_plugin_module\n")
    (root / "broken_plugin_module.py").write_text("raise ImportError('missing dependency xyz')\n")
    sys.path.insert(0, str(root))
    try:
        with pytest.warns(UserWarning, match="plugin 'broken'.*broken-plugin.*missing dependency xyz"):
            plugins.reload_plugins()
        assert "gui_grounding" in TASKS
    finally:
        sys.path.remove(str(root))
        plugins.reload_plugins()
