"""``mmrl demo`` in a real browser: a tiny GUI grounding run made here, served by the app, driven in headless
Chromium. Saves a screenshot to ``$MMRL_TEST_ARTIFACTS`` (default ``test-artifacts/``)."""
from __future__ import annotations

import json

import pytest

from mmrl.config import TrainConfig, load_config
from mmrl.trainer import train

pytestmark = pytest.mark.slow


@pytest.fixture
def live_app(tiny_run, tmp_path, port):
    """The app over a two-step tiny GUI grounding run, re-reading the run every second."""
    from mmrl.demo.app import launch

    train(load_config(TrainConfig, None, tiny_run + ["grpo.max_new_tokens=10"]))
    app = launch(tmp_path / "run", port=port, block=False, refresh_seconds=1.0)
    yield tmp_path / "run", f"http://127.0.0.1:{port}/"
    app.close()


def test_select_step_and_sample_then_see_picture_rewards_and_plots(live_app, page):
    from selenium.webdriver.common.by import By

    run, url = live_app
    browser = page.driver
    browser.get(url)
    page.wait_text("#run-info", "2 steps with rollouts")
    page.choose("step-a", "1")
    step1 = [json.loads(line) for line in (run / "rollouts" / "step_000001.jsonl").read_text().splitlines()]
    completions = {" ".join(c.split()) for g in step1 for c in g["completions"]}  # the table's preview
    page.wait(lambda d: (rows := page.rows("samples-a")) and rows[0][-1] in completions)

    rows = page.rows("samples-a")
    header = page.header("samples-a")
    total, text = header.index("total"), header.index("text")
    assert [float(r[total]) for r in rows] == sorted(float(r[total]) for r in rows)  # failures first
    pick = rows[1]
    page.click_cell("samples-a", 1, text)
    page.wait(lambda d: " ".join(page.value("completion-a").split()) == pick[text])

    rewards = dict(r[:2] for r in page.rows("rewards-a"))
    assert set(rewards) == {"reward: point", "reward: format", "total", "advantage", "length", "truncated"}
    assert float(rewards["total"]) == pytest.approx(float(pick[total]), abs=1e-3)
    picture = browser.find_element(By.CSS_SELECTOR, "#picture-a img")
    page.wait(lambda d: d.execute_script("return arguments[0].complete", picture))
    assert browser.execute_script("return arguments[0].naturalWidth", picture) >= 448
    for plot in ("reward", "kl", "length", "components"):
        marks = browser.find_elements(By.CSS_SELECTOR, f"#plot-{plot} canvas, #plot-{plot} svg")
        assert marks and marks[0].size["width"] > 100, plot
    page.screenshot("demo_gui.png")


def test_live_refresh_and_bad_rollout_files_show_messages(live_app, page):
    from selenium.webdriver.common.by import By

    run, url = live_app
    browser = page.driver
    browser.get(url)
    page.wait_text("#run-info", "2 steps with rollouts")
    (run / "rollouts" / "step_000003.jsonl").write_text('{"step": 3, "prompt": "half a line\n')
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "reward/mean": 0.5}) + "\n")
    page.wait_text("#run-info", "3 steps with rollouts, latest step 3")  # no restart needed
    page.choose("step-a", "3")
    page.wait_text("#notes-a", "step_000003.jsonl:1: not valid JSON")
    assert browser.find_element(By.CSS_SELECTOR, "#run-info").is_displayed()  # the page is still alive

    page.wait_text("#summary", "step 1")  # panel B compares with the first step
    (run / "rollouts" / "step_000001.jsonl").unlink()
    page.wait_text("#run-info", "2 steps with rollouts, latest step 3")  # the refresh saw it go
    browser.find_element(By.XPATH, "//*[@id='order']//label[normalize-space(.)='best first']").click()
    page.wait_text("#notes-b", "step_000001.jsonl not found")
    page.screenshot("demo_bad_files.png")
