"""``mmrl demo`` in a real browser: a tiny GUI grounding run made here, served by the app, driven in headless
Chromium. Saves a screenshot to ``$MMRL_TEST_ARTIFACTS`` (default ``test-artifacts/``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mmrl.config import TrainConfig, load_config
from mmrl.trainer import train

pytestmark = pytest.mark.slow

WAIT = 60


def _artifact(name: str) -> Path:
    folder = Path(os.environ.get("MMRL_TEST_ARTIFACTS", "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


@pytest.fixture
def live_app(tiny_run, tmp_path, port):
    """The app over a two-step tiny GUI grounding run, re-reading the run every second."""
    from mmrl.demo.app import launch

    train(load_config(TrainConfig, None, tiny_run + ["grpo.max_new_tokens=10"]))
    app = launch(tmp_path / "run", port=port, block=False, refresh_seconds=1.0)
    yield tmp_path / "run", f"http://127.0.0.1:{port}/"
    app.close()


def _wait_text(driver, css: str, text: str):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.webdriver.common.by import By

    WebDriverWait(driver, WAIT).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))


def _choose(driver, dropdown: str, option: str) -> None:
    """Open the Gradio dropdown ``#dropdown`` and click its ``option``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, f"#{dropdown} input").click()
    css = f"ul[role='listbox'] li[role='option'][aria-label='{option}']"
    WebDriverWait(driver, WAIT).until(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()


def _rows(driver, table: str) -> list[list[str]]:
    """The cell texts of a Gradio dataframe's rows (it renders them as ``role=row`` / ``role=gridcell``)."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} [role='row'].virtual-row")
    return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "[role='gridcell']")] for row in rows]


def test_select_step_and_sample_then_see_picture_rewards_and_plots(live_app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run, url = live_app
    browser.get(url)
    _wait_text(browser, "#run-info", "2 steps with rollouts")
    _choose(browser, "step-a", "1")
    step1 = [json.loads(line) for line in (run / "rollouts" / "step_000001.jsonl").read_text().splitlines()]
    completions = {" ".join(c.split()) for g in step1 for c in g["completions"]}  # the table's preview
    WebDriverWait(browser, WAIT).until(lambda d: (rows := _rows(d, "samples-a")) and rows[0][-1] in completions)

    rows = _rows(browser, "samples-a")
    header = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#samples-a thead th")]
    total, text = header.index("total"), header.index("text")
    assert [float(r[total]) for r in rows] == sorted(float(r[total]) for r in rows)  # failures first
    pick = rows[1]
    browser.find_element(By.CSS_SELECTOR, f"#samples-a [data-testid='cell-1-{text}']").click()
    WebDriverWait(browser, WAIT).until(
        lambda d: " ".join(d.find_element(By.CSS_SELECTOR, "#completion-a textarea").get_attribute("value").split())
        == pick[text])

    rewards = dict(r[:2] for r in _rows(browser, "rewards-a"))
    assert set(rewards) == {"reward: point", "reward: format", "total", "advantage", "length", "truncated"}
    assert float(rewards["total"]) == pytest.approx(float(pick[total]), abs=1e-3)
    picture = browser.find_element(By.CSS_SELECTOR, "#picture-a img")
    WebDriverWait(browser, WAIT).until(lambda d: d.execute_script("return arguments[0].complete", picture))
    assert browser.execute_script("return arguments[0].naturalWidth", picture) >= 448
    for plot in ("reward", "kl", "length", "components"):
        marks = browser.find_elements(By.CSS_SELECTOR, f"#plot-{plot} canvas, #plot-{plot} svg")
        assert marks and marks[0].size["width"] > 100, plot
    browser.save_screenshot(str(_artifact("demo_gui.png")))


def test_live_refresh_and_bad_rollout_files_show_messages(live_app, browser):
    from selenium.webdriver.common.by import By

    run, url = live_app
    browser.get(url)
    _wait_text(browser, "#run-info", "2 steps with rollouts")
    (run / "rollouts" / "step_000003.jsonl").write_text('{"step": 3, "prompt": "half a line\n')
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "reward/mean": 0.5}) + "\n")
    _wait_text(browser, "#run-info", "3 steps with rollouts, latest step 3")  # no restart needed
    _choose(browser, "step-a", "3")
    _wait_text(browser, "#notes-a", "step_000003.jsonl:1: not valid JSON")
    assert browser.find_element(By.CSS_SELECTOR, "#run-info").is_displayed()  # the page is still alive

    _wait_text(browser, "#summary", "step 1")  # panel B compares with the first step
    (run / "rollouts" / "step_000001.jsonl").unlink()
    _wait_text(browser, "#run-info", "2 steps with rollouts, latest step 3")  # the refresh saw it go
    browser.find_element(By.XPATH, "//*[@id='order']//label[normalize-space(.)='best first']").click()
    _wait_text(browser, "#notes-b", "step_000001.jsonl not found")
    browser.save_screenshot(str(_artifact("demo_bad_files.png")))
