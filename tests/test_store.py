"""The build-once cache and atomic writes of ``mmrl.store``."""
import json

import pytest

from mmrl.store import build_once, cached_build, write_json_atomic


def test_build_once_builds_once_and_cleans_up_a_failed_build(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "done.txt").write_text("x")

    folder = tmp_path / "models" / "thing"
    assert build_once(folder, build, ["done.txt"]) == folder
    assert build_once(folder, build, ["done.txt"]) == folder
    assert len(calls) == 1 and calls[0] != folder and (folder / "done.txt").read_text() == "x"

    def broken(folder):
        (folder / "half.txt").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path / "other", broken, ["done.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no folder, no temporary left behind


def test_cached_build_key_is_the_settings_hash(tmp_path):
    def build(folder):
        (folder / "a.json").write_text("[]")

    path = cached_build(str(tmp_path), "kind", {"b": 1, "a": 2}, "a.json", build)
    # sorted-key JSON of the settings, sha256, first 12 hex digits: caches written before stay valid
    assert path == tmp_path / "data" / "kind-21501dbaf73f" / "a.json"
    assert cached_build(str(tmp_path), "kind", {"a": 2, "b": 1}, "a.json", build) == path


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "result.json"
    write_json_atomic(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n' and json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]
