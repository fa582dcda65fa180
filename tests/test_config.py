"""Tests for mmrl.config: defaults, YAML + key=value overrides, unknown keys, type errors, every shipped config."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mmrl import config as C
from mmrl.config import GRPOConfig, LoraConfig, TrainConfig, build, load_config, parse_overrides, read_yaml
from mmrl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "configs").glob("**/*.yaml") if "diffusion" not in p.parts)
DIFFUSION = sorted((REPO / "configs" / "diffusion").glob("*/*.yaml"))


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- defaults


def test_defaults_build_and_match_the_dataclass_defaults():
    cfg = load_config(TrainConfig)
    assert cfg == TrainConfig()
    assert cfg.grpo.lr == 1e-5 and cfg.grpo.group_size == 8 and cfg.grpo.advantage == "grpo"
    assert cfg.model.lora.enabled is False and cfg.model.lora.r == 16
    assert cfg.model.lora.target_modules == LoraConfig().target_modules
    assert cfg.data == {} and cfg.rewards == {}


def test_build_from_empty_dict_is_the_defaults():
    assert build(GRPOConfig, {}) == GRPOConfig()


def test_every_field_has_a_docstring():
    # Principle 6: a docstring per field. The dataclass source holds a string literal right after each field.
    import ast
    import inspect

    for cls in (LoraConfig, C.ModelConfig, C.SFTConfig, GRPOConfig, C.EvalConfig, TrainConfig):
        body = ast.parse(inspect.getsource(cls)).body[0].body
        documented = {
            stmt.target.id
            for stmt, nxt in zip(body, body[1:])
            if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
        }
        assert documented == {f.name for f in dataclasses.fields(cls)}, cls.__name__


# ---------------------------------------------------------------- YAML + overrides


def test_yaml_then_overrides(tmp_path):
    path = write(
        tmp_path,
        "output_dir: runs/x\nseed: 3\ngrpo:\n  steps: 7\n  lr: 2.0e-4\nmodel:\n  lora:\n    r: 8\n",
    )
    cfg = load_config(TrainConfig, path, ["grpo.lr=1e-5", "model.lora.enabled=true", "seed=5"])
    assert cfg.output_dir == "runs/x"
    assert cfg.seed == 5  # override beats YAML
    assert cfg.grpo.steps == 7  # YAML beats default (100)
    assert cfg.grpo.lr == 1e-5 and isinstance(cfg.grpo.lr, float)  # '1e-5' (no dot) must still be a float
    assert cfg.model.lora.enabled is True
    assert cfg.model.lora.r == 8  # from YAML, kept while a sibling key is overridden
    assert cfg.model.lora.alpha == 32  # untouched nested default survives the merge
    assert cfg.grpo.group_size == 8  # untouched default


def test_exponent_without_dot_in_yaml_file_is_a_float(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-5` as the string '1e-5'; a learning rate written that way must not be rejected.
    cfg = load_config(TrainConfig, write(tmp_path, "grpo:\n  lr: 1e-5\nsft:\n  lr: 3E-4\n"))
    assert cfg.grpo.lr == pytest.approx(1e-5) and cfg.sft.lr == pytest.approx(3e-4)


def test_list_override():
    cfg = load_config(TrainConfig, None, ["model.lora.target_modules=[q_proj, v_proj]"])
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]


def test_list_item_of_wrong_type_names_the_index():
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules\[1\]"):
        load_config(TrainConfig, None, ["model.lora.target_modules=[q_proj, 3]"])


def test_dict_sections_merge_with_yaml(tmp_path):
    path = write(tmp_path, "data:\n  answer_format: point\n  synthetic:\n    n_train: 10\n    width: 112\n")
    cfg = load_config(TrainConfig, path, ["data.synthetic.n_train=20", "rewards.point=0.5"])
    assert cfg.data == {"answer_format": "point", "synthetic": {"n_train": 20, "width": 112}}
    assert cfg.rewards == {"point": 0.5}


def test_parse_overrides_nests_and_parses_scalars():
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "e=null", "f=", "g=1.5"]) == {
        "a": {"b": {"c": 1, "d": "x"}},
        "e": None,
        "f": "",
        "g": 1.5,
    }


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="grpo.lr"):
        parse_overrides(["grpo.lr"])


def test_ints_widen_to_float():
    cfg = load_config(TrainConfig, None, ["grpo.lr=1", "grpo.max_grad_norm=0"])
    assert cfg.grpo.lr == 1.0 and type(cfg.grpo.lr) is float
    assert type(cfg.grpo.max_grad_norm) is float


def test_optional_field_accepts_null_and_string():
    assert load_config(TrainConfig, None, ["model.attn_implementation=null"]).model.attn_implementation is None
    assert load_config(TrainConfig, None, ["model.attn_implementation=sdpa"]).model.attn_implementation == "sdpa"


# ---------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["sedd=1"])
    msg = str(e.value)
    assert "'sedd'" in msg
    for key in ("seed", "output_dir", "grpo", "model"):
        assert key in msg


def test_unknown_nested_key_names_full_path_and_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["grpo.lrr=1"])
    msg = str(e.value)
    assert "'grpo.lrr'" in msg
    for key in ("lr", "steps", "group_size", "loss_args", "loss_agg"):
        assert key in msg
    assert "output_dir" not in msg  # the valid keys listed are grpo's, not the top level's


def test_unknown_deeply_nested_key_in_yaml(tmp_path):
    path = write(tmp_path, "model:\n  lora:\n    rank: 4\n")
    with pytest.raises(ConfigError, match=r"model\.lora\.rank") as e:
        load_config(TrainConfig, path)
    assert "alpha" in str(e.value) and "target_modules" in str(e.value)


# ---------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("grpo.steps=abc", "grpo.steps"),  # str for int
        ("grpo.lr=true", "grpo.lr"),  # bool is not a float even though bool subclasses int
        ("grpo.steps=true", "grpo.steps"),  # ...nor an int
        ("grpo.steps=1.5", "grpo.steps"),  # float does not narrow to int
        ("model.lora.enabled=yes please", "model.lora.enabled"),
        ("model.lora.target_modules=q_proj", "model.lora.target_modules"),  # str for list
        ("grpo=3", "grpo"),  # scalar for a section
        ("rewards.point=high", "rewards.point"),  # dict[str, float] value
    ],
)
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, [override])
    assert f"'{key}'" in str(e.value)


# ---------------------------------------------------------------- files


def test_missing_yaml_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(TrainConfig, missing)


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "grpo:\n  lr: [1, 2\n", name="broken.yaml")
    with pytest.raises(ConfigError, match="broken.yaml.*invalid YAML"):
        read_yaml(path)


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="list.yaml"):
        read_yaml(write(tmp_path, "- 1\n- 2\n", name="list.yaml"))


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_yaml_config_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="holds no settings") as e:
        load_config(TrainConfig, path)
    assert str(e.value).startswith(str(path))


def test_load_config_prefixes_the_file_name_to_key_errors(tmp_path):
    path = write(tmp_path, "grpo:\n  steps: many\n", name="mine.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    msg = str(e.value)
    assert msg.startswith(str(path) + ":")
    assert "'grpo.steps'" in msg


# ---------------------------------------------------------------- shipped configs


def test_configs_exist():
    assert SHIPPED, "no YAML under configs/"


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO / "configs")) for p in SHIPPED])
def test_shipped_config_loads_with_its_task_data_section(path):
    from mmrl.plugins import TASKS

    raw = read_yaml(path)
    task_name = raw.get("task", path.relative_to(REPO / "configs").parts[0])
    cfg = load_config(TrainConfig, path, [f"task={task_name}"])
    assert cfg.task == task_name
    data = TASKS.config(cfg.task, cfg.data, "data")
    assert isinstance(data, TASKS.capability(cfg.task, "config"))


@pytest.mark.parametrize("path", DIFFUSION, ids=[str(p.relative_to(REPO / "configs")) for p in DIFFUSION])
def test_shipped_diffusion_config_loads_with_valid_rewards_and_prompts(path):
    from mmrl.diffusion.config import DiffusionConfig
    from mmrl.diffusion.image_rewards import WeightedImageReward
    from mmrl.diffusion.prompts import load_prompts
    from mmrl.plugins import DIFFUSION_ALGORITHMS

    cfg = load_config(DiffusionConfig, path)
    assert cfg.algorithm == path.parent.name
    WeightedImageReward([(r.name, r.weight, r.args) for r in cfg.rewards])  # names and arguments are checked
    DIFFUSION_ALGORITHMS.config(cfg.algorithm, cfg.algorithm_args, "algorithm_args")
    file = str(REPO / cfg.prompts.file) if cfg.prompts.file else None
    assert load_prompts(file, cfg.prompts.list)
