"""Charades-STA: annotation reading in the real format, metrics counted by hand, one-line errors naming file and
line, video lookup, and ``run`` end to end on tiny real videos."""
import argparse
import json
import re
from pathlib import Path

import pytest

from mmrl.errors import DataError
from mmrl.eval.charades import (
    CharadesRecord,
    add_arguments,
    charades_metrics,
    find_video,
    load_annotations,
    read_annotations,
    read_predictions,
    run,
    score_predictions,
)

# ids are 0-based line numbers: line 2 is blank, so the ids are 0, 1, 3, 4, 5, 6, 7
ANNOTATIONS = """\
3MSZA 24.3 30.4##person turn a light on.
3MSZA 0.0 8.0##person opening the door.

AO8RW 5.0 10.0##a person is putting a book on a shelf.
AO8RW 10.0 20.0##person closes the door.
Y6R7T 2.0 6.0##person sitting on a chair.
Y6R7T 0.0 4.0##person takes a phone.
AO8RW 1.0 3.0##person smiling.
"""
DURATIONS = {0: 32.0, 1: 32.0, 3: 30.0, 4: 30.0, 5: 8.0, 6: 8.0, 7: 30.0}
OUTPUTS = {
    0: "<think>the light</think><answer>24.3 to 30.4</answer>",  # exact: 1
    1: "[2, 10]",  # vs (0, 8): inter 6, union 10 -> 0.6
    3: "I don't know",  # unparsable: 0
    # 4 missing: 0
    5: '{"start_time": 4, "end_time": 99}',  # clamped to (4, 8) vs (2, 6): inter 2, union 6 -> 1/3
    6: "<answer>-2 to 3</answer>",  # clamped to (0, 3) vs (0, 4): 3/4
    7: "3 to 1",  # reversed: parsed, but IoU 0
    2: "0 to 1",  # line 2 is blank: no such record, ignored
}
# IoUs 1, 0.6, 0, 0, 1/3, 0.75, 0 over n = 7:
# R1@0.3: 1, 0.6, 1/3, 0.75 -> 4/7; R1@0.5: 1, 0.6, 0.75 -> 3/7; R1@0.7: 1, 0.75 -> 2/7
# mIoU = (1 + 0.6 + 1/3 + 0.75) / 7 = (161/60) / 7 = 23/60
EXPECTED = {"r1@0.3": 4 / 7, "r1@0.5": 3 / 7, "r1@0.7": 2 / 7, "miou": 23 / 60, "n": 7, "unparsable": 1, "missing": 1}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_predictions(path: Path, outputs: dict[int, str]) -> Path:
    return _write(path, "".join(json.dumps({"id": k, "output": v}) + "\n" for k, v in outputs.items()))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- annotations


def test_read_annotations_real_format(tmp_path):
    path = _write(tmp_path / "charades_sta_test.txt", ANNOTATIONS)
    records = read_annotations(path)
    assert [r.id for r in records] == [0, 1, 3, 4, 5, 6, 7]
    assert records[0] == CharadesRecord(0, "3MSZA", 24.3, 30.4, "person turn a light on.", str(path), 1)
    assert (records[2].id, records[2].line, records[2].video_id) == (3, 4, "AO8RW")
    assert load_annotations(path) == (records, 0)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match=f"^annotation file not found: {re.escape(str(tmp_path / 'nope.txt'))}$"):
        read_annotations(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("AO8RW 1.0 2.0 person smiling.", "no '##' before the sentence"),
        ("AO8RW 1.0##person smiling.", "2 fields before '##', expected 3"),
        ("AO8RW 1.0 2.0 3.0##person smiling.", "4 fields before '##', expected 3"),
        ("AO8RW one 2.0##person smiling.", "START and END must be numbers"),
        ("AO8RW nan 2.0##person smiling.", "START and END must be finite"),
        ("AO8RW 1.0 inf##person smiling.", "START and END must be finite"),
        ("AO8RW -1.5 2.0##person smiling.", "negative START -1.5"),
        ("AO8RW 3.0 1.0##person smiling.", "START 3 is after END 1"),
        ("AO8RW 1.0 2.0##   ", "empty sentence"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, reason):
    path = _write(tmp_path / "ann.txt", f"3MSZA 0.0 8.0##person opening the door.\n{line}\n")
    expected = (
        f"{path}:2: malformed annotation line {line.strip()!r} (expected 'VIDEO_ID START END##sentence'): {reason}"
    )
    with pytest.raises(DataError) as info:
        read_annotations(path)
    assert str(info.value) == expected


def test_skip_bad_lines_are_counted(tmp_path):
    text = "A 0 1##ok.\nA 1##too few fields\n\nA 2 1##reversed\nB 1 2##ok too.\nB 1 2\n"
    path = _write(tmp_path / "ann.txt", text)
    records, skipped = load_annotations(path, skip_bad=True)
    assert [(r.id, r.video_id, r.start, r.end) for r in records] == [(0, "A", 0.0, 1.0), (4, "B", 1.0, 2.0)]
    assert skipped == 3
    with pytest.raises(DataError, match=r"ann\.txt:2: malformed"):
        load_annotations(path)


# ---------------------------------------------------------------- metrics and scoring


def test_charades_metrics_hand_values():
    # thresholds are inclusive: 0.3 counts for R1@0.3, 0.5 for R1@0.5, 0.7 for R1@0.7
    metrics = charades_metrics([0.3, 0.5, 0.7, 0.1])
    assert metrics == pytest.approx({"r1@0.3": 0.75, "r1@0.5": 0.5, "r1@0.7": 0.25, "miou": 0.4, "n": 4})
    assert charades_metrics([]) == {"r1@0.3": 0.0, "r1@0.5": 0.0, "r1@0.7": 0.0, "miou": 0.0, "n": 0}


def test_score_predictions_counted_by_hand(tmp_path):
    records = read_annotations(_write(tmp_path / "ann.txt", ANNOTATIONS))
    assert score_predictions(records, OUTPUTS, DURATIONS) == pytest.approx(EXPECTED)
    # without durations the answers are not clamped at all: query 5 scores (4, 99) vs (2, 6): 2/97, and query 6
    # scores (-2, 3) vs (0, 4): inter 3, union 6 -> 0.5 (clamped at 0 it would be 0.75)
    # IoUs 1, 0.6, 0, 0, 2/97, 0.5, 0: R1@0.3 = R1@0.5 = 3/7 (1, 0.6, 0.5), R1@0.7 = 1/7
    for unclamped in (score_predictions(records, OUTPUTS, {}), score_predictions(records, OUTPUTS)):
        assert unclamped == pytest.approx({"r1@0.3": 3 / 7, "r1@0.5": 3 / 7, "r1@0.7": 1 / 7,
                                           "miou": (1 + 0.6 + 2 / 97 + 0.5) / 7, "n": 7, "unparsable": 1,
                                           "missing": 1})
    nothing = score_predictions(records, {}, DURATIONS)
    assert (nothing["miou"], nothing["missing"], nothing["unparsable"]) == (0.0, 7, 0)


# ---------------------------------------------------------------- videos and predictions


def test_find_video_extensions(tmp_path):
    for name in ("A.avi", "A.mp4", "B.MKV", "C.webm", "D.m4v", "E.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert find_video(tmp_path, "A") == tmp_path / "A.mp4"  # mp4 is tried first
    assert find_video(str(tmp_path), "C") == tmp_path / "C.webm"
    assert find_video(tmp_path, "D") == tmp_path / "D.m4v"
    assert find_video(tmp_path, "B").name.lower() == "b.mkv"  # upper case (any case on case-insensitive disks)
    message = (
        f"video 'E' not found in {tmp_path} (tried extensions: mp4, avi, mkv, webm, mov, m4v, "
        "MP4, AVI, MKV, WEBM, MOV, M4V)"
    )
    with pytest.raises(DataError) as info:
        find_video(tmp_path, "E")
    assert str(info.value) == message
    with pytest.raises(DataError, match=r"video 'A' not found in .*missing"):
        find_video(tmp_path / "missing", "A")


def test_read_predictions(tmp_path):
    rows = [{"id": 0, "output": "1 to 2"}, {"id": 3, "output": ""}]
    path = _write(tmp_path / "preds.jsonl", "\n".join(json.dumps(r) for r in rows[:1]) + "\n\n" + json.dumps(rows[1]))
    assert read_predictions(path) == {0: "1 to 2", 3: ""}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"output": "x"}', "missing field 'id'"),
        ('{"id": 1}', "missing field 'output'"),
        ('{"id": "1", "output": "x"}', "field 'id' must be an integer"),
        ('{"id": true, "output": "x"}', "field 'id' must be an integer"),
        ('{"id": 1.0, "output": "x"}', "field 'id' must be an integer"),
        ('{"id": 1, "output": null}', "field 'output' must be a string"),
        ('{"id": 0, "output": "again"}', "duplicate id 0"),
    ],
)
def test_read_predictions_errors_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "preds.jsonl", '{"id": 0, "output": "1 to 2"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:3: {re.escape(message)}"):
        read_predictions(path)


def test_missing_predictions_file(tmp_path):
    with pytest.raises(DataError, match="predictions file not found"):
        read_predictions(tmp_path / "nope.jsonl")


def test_arguments_are_validated():
    base = ["--annotations", "a.txt", "--videos", "v"]
    for argv in (base, [*base, "--predictions", "p", "--model", "m"], ["--videos", "v", "--predictions", "p"]):
        with pytest.raises(SystemExit):
            _parse(argv)
    args = _parse([*base, "--model", "m", "--skip-bad-samples"])
    assert (args.model, args.predictions, args.skip_bad_samples, args.output) == ("m", None, True, None)


# ---------------------------------------------------------------- end to end on real videos

E2E_ANNOTATIONS = """\
vidA 0.0 2.0##person opens a door.
vidB 0.5 1.5##person stands up.
vidB 0.0 1.0##person sits down.
"""
E2E_OUTPUTS = {
    0: "<answer>0.0 to 2.0</answer>",  # exact: 1
    1: "<answer>0.5 to 1e9</answer>",  # clamped to the 2 s video: (0.5, 2) vs (0.5, 1.5) -> 1/1.5
    2: "no idea",  # unparsable: 0
}
# IoUs 1, 2/3, 0: R1@0.3 = R1@0.5 = 2/3, R1@0.7 = 1/3, mIoU = 5/9 (unclamped, query 1 would score ~1e-9)
E2E_EXPECTED = {"r1@0.3": 2 / 3, "r1@0.5": 2 / 3, "r1@0.7": 1 / 3, "miou": 5 / 9, "n": 3, "unparsable": 1, "missing": 0}


def _write_video(path: Path, seconds: int, fps: int = 4) -> Path:
    """A real 32x32 MPEG-4 video of ``seconds * fps`` grey frames."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 16 * i % 256, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture
def video_dir(tmp_path):
    """``videos/vidA.mp4`` (4 s) and ``videos/vidB.avi`` (2 s), both at 4 fps."""
    pytest.importorskip("av")
    pytest.importorskip("decord")
    folder = tmp_path / "videos"
    folder.mkdir()
    _write_video(folder / "vidA.mp4", seconds=4)
    _write_video(folder / "vidB.avi", seconds=2)
    return folder


def _check_result(result: dict, **counts: int) -> None:
    assert {k: result[k] for k in E2E_EXPECTED} == pytest.approx(E2E_EXPECTED, abs=0.02)  # duration ~ 2 s
    assert {k: result[k] for k in counts} == counts


def test_run_with_predictions_end_to_end(tmp_path, video_dir, capsys):
    annotations = _write(tmp_path / "ann.txt", E2E_ANNOTATIONS)
    preds = _write_predictions(tmp_path / "preds.jsonl", E2E_OUTPUTS)
    out = tmp_path / "res" / "charades.json"
    args = _parse(["--annotations", str(annotations), "--videos", str(video_dir), "--predictions", str(preds),
                   "--output", str(out)])
    assert run(args) == 0
    result = json.loads(out.read_text())
    _check_result(result, skipped_lines=0, skipped_queries=0)
    assert [p.name for p in out.parent.iterdir()] == ["charades.json"]  # the temporary file is gone
    header, values = capsys.readouterr().out.splitlines()
    assert header.split() == ["R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "n", "unparsable", "missing", "skipped_lines",
                              "skipped_queries"]
    assert values.split()[:3] == ["66.7", "66.7", "33.3"] and values.split()[4:] == ["3", "1", "0", "0", "0"]


def test_run_skip_bad_samples(tmp_path, video_dir, capsys):
    (video_dir / "vidD.mp4").write_bytes(b"not a video at all")
    text = E2E_ANNOTATIONS + "vidA 3.0 1.0##reversed moment.\nvidC 0.0 1.0##no such video.\nvidD 0.0 1.0##corrupt.\n"
    annotations = _write(tmp_path / "ann.txt", text)
    preds = _write_predictions(tmp_path / "preds.jsonl", E2E_OUTPUTS)
    argv = ["--annotations", str(annotations), "--videos", str(video_dir), "--predictions", str(preds)]
    with pytest.raises(DataError, match=r"ann\.txt:4: malformed annotation line"):
        run(_parse(argv))
    assert run(_parse([*argv, "--skip-bad-samples"])) == 0
    values = capsys.readouterr().out.splitlines()[1].split()
    assert values[4:] == ["3", "1", "0", "1", "2"]  # n, unparsable, missing, skipped lines, skipped queries
    # without the flag, a missing video is an error naming it and the annotation file and line of its query
    _write(annotations, E2E_ANNOTATIONS + "vidC 0.0 1.0##no such video.\n")
    with pytest.raises(DataError, match=r"ann\.txt:4: video 'vidC' not found in"):
        run(_parse(argv))


def test_video_budget_overrides_are_checked_like_config_keys():
    from mmrl.errors import ConfigError
    from mmrl.eval.charades import video_budget

    budget = video_budget(["fps=1", "max_frames=16", "min_pixels=3136", "max_pixels=3136"])
    assert (budget.fps, budget.max_frames, budget.min_pixels, budget.max_pixels) == (1.0, 16, 3136, 3136)
    with pytest.raises(ConfigError, match="--video bogus"):
        video_budget(["bogus=1"])
    with pytest.raises(ConfigError, match="max_frames"):
        video_budget(["max_frames=many"])


# ---------------------------------------------------------------- --predictions without --videos

NO_VIDEO_OUTPUTS = {
    0: "<answer>-1.0 to 2.0</answer>",  # vs (0, 2): as written inter 2, union 3 -> 2/3 (clamped at 0 it is 1)
    1: "<answer>1.0 to 2.5</answer>",  # vs (0.5, 1.5): inter 0.5, union 2 -> 1/4; in vidB (2 s): (1, 2) -> 1/3
    2: "no idea",  # unparsable: 0
}
# without videos, IoUs 2/3, 1/4, 0: R1@0.3 = 1/3, R1@0.5 = 1/3, R1@0.7 = 0, mIoU = (2/3 + 1/4) / 3 = 11/36
NO_VIDEO_EXPECTED = {"r1@0.3": 1 / 3, "r1@0.5": 1 / 3, "r1@0.7": 0.0, "miou": 11 / 36, "n": 3, "unparsable": 1,
                     "missing": 0, "skipped_queries": 0, "clamped": False}
# with the videos (vidA 4 s, vidB 2 s), IoUs 1, 1/3, 0: R1@0.3 = 2/3, R1@0.5 = R1@0.7 = 1/3, mIoU = 4/9
WITH_VIDEO_EXPECTED = {"r1@0.3": 2 / 3, "r1@0.5": 1 / 3, "r1@0.7": 1 / 3, "miou": 4 / 9, "n": 3, "unparsable": 1,
                       "missing": 0, "skipped_queries": 0, "clamped": True}


def test_predictions_without_videos_are_scored_unclamped(tmp_path, capsys):
    from mmrl.cli import main

    annotations = _write(tmp_path / "ann.txt", E2E_ANNOTATIONS)  # no video exists anywhere
    preds = _write_predictions(tmp_path / "preds.jsonl", NO_VIDEO_OUTPUTS)
    out = tmp_path / "metrics.json"
    main(["eval", "charades", "--annotations", str(annotations), "--predictions", str(preds), "--output", str(out)])
    result = json.loads(out.read_text())
    assert {k: result[k] for k in NO_VIDEO_EXPECTED} == pytest.approx(NO_VIDEO_EXPECTED)
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["33.3", "33.3", "0.0", "30.6"]


def test_predictions_with_videos_are_clamped_as_before(tmp_path, video_dir):
    annotations = _write(tmp_path / "ann.txt", E2E_ANNOTATIONS)
    preds = _write_predictions(tmp_path / "preds.jsonl", NO_VIDEO_OUTPUTS)
    out = tmp_path / "metrics.json"
    run(_parse(["--annotations", str(annotations), "--videos", str(video_dir), "--predictions", str(preds),
                "--output", str(out)]))
    result = json.loads(out.read_text())
    assert {k: result[k] for k in WITH_VIDEO_EXPECTED} == pytest.approx(WITH_VIDEO_EXPECTED, abs=0.02)  # ~2 s


def test_model_needs_videos(tmp_path, capsys):
    from mmrl.cli import main

    annotations = _write(tmp_path / "ann.txt", E2E_ANNOTATIONS)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "charades", "--annotations", str(annotations), "--model", str(tmp_path / "model")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "mmrl: error: --videos is required with --model (the videos are the model's input)")
    assert "no clamping" in " ".join(_help().split())


def _help() -> str:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.format_help()
