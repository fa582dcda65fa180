"""The rollout inspector under hostile content: a run written by the trainer's own writer (``RunDir``) whose prompts,
completions, reward names, image names, metric names and task name carry HTML, JavaScript, Markdown, control
characters, bidirectional overrides, a lone surrogate and a megabyte of text, next to secret files it must not
serve. The text is shown as text, nothing runs, and no route of the Gradio server reads a file it should not."""
from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request

import pytest
from PIL import Image

from mmrl.demo import tables
from mmrl.demo.app import Viewer
from mmrl.demo.text import DISPLAY_CHARS, for_display, markdown_literal, visible
from mmrl.store import RunDir
from mmrl.types import Group, Sample

HTML = ("<script>window.__pwned='script'</script><script>alert(1)</script>"
        "<img src=x onerror=\"window.__pwned='img'\"><img src=y onerror=alert(1)>"
        "<iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>"
        "<a href=\"javascript:window.__pwned='a'\">a link</a><svg onload=\"window.__pwned='svg'\"></svg>")
MARKDOWN = ("[x](javascript:window.__pwned='md') ![](http://evil.invalid/x.png) <http://evil.invalid/y> **bold** "
            "$$\\href{javascript:alert(1)}{x}$$")
CONTROL = "\x1b[31mred\x1b[0m nul\x00 bel\x07 del\x7f nel\x85 \u202eevil\u202c lone\ud800 end"
CONTROL_SHOWN = "␛[31mred␛[0m nul␀ bel␇ del␡ nel⟨U+0085⟩ ⟨U+202E⟩evil⟨U+202C⟩ lone� end"
CONTROL_PREVIEW = "␛[31mred␛[0m nul␀ bel␇ del␡ nel ⟨U+202E⟩evil⟨U+202C⟩ lone� end"  # NEL is whitespace: collapsed
BIG = "".join(f"{i:07d} " for i in range(1 << 17))  # 1,048,576 characters
PROMPT = "Click the button. " + HTML + " " + MARKDOWN
ANSWER = "<img src=z onerror=\"window.__pwned='answer'\">"
REWARD = "<img src=r onerror=\"window.__pwned='reward'\">"
IMAGE_NAME = "![](http://evil.invalid/z.png)<img src=n onerror=\"window.__pwned='name'\">"
TASK = "<img src=t onerror=\"window.__pwned='task'\">[t](javascript:alert(1))"
SECRET = "mmrl-hostile-secret-5b1e"
SERVED_PAGE = "<script>window.__pwned='served'</script>"


@pytest.fixture
def hostile_run(tmp_path):
    """``tmp_path/run``: step 1 holds one GUI group with the four hostile completions (totals 0, 0.1, 0.2, 0.3, so
    "failures first" lists them in this order) and a group whose "screenshot" is an HTML page (the writer copies
    it into ``media/``); step 2, written without media copies as ``log_media=false`` runs do, names a hostile
    image. Next to the run: ``secret.txt``, and inside it symlinks to it and to ``tmp_path``."""
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (40, 40), (200, 200, 200)).save(data / "shot.png")
    (data / "page.html").write_text(SERVED_PAGE)
    (tmp_path / "secret.txt").write_text(SECRET)
    fields = {"gt_box": [10.0, 12.0, 30.0, 28.0], "scale": [1.0, 1.0], "answer_format": "point"}
    run = RunDir(tmp_path / "run")
    hostile = Sample(id="1", prompt=PROMPT, images=[str(data / "shot.png")], answer=ANSWER, fields=fields)
    completions = [HTML, MARKDOWN, CONTROL, BIG]
    totals = [0.0, 0.1, 0.2, 0.3]
    page = Sample(id="2", prompt="an HTML page as the screenshot", images=[str(data / "page.html")], fields=fields)
    run.log_rollouts(1, [
        Group(hostile, completions, {"point": totals, REWARD: [0.0] * 4}, totals, [0.0] * 4, [False] * 4, [5] * 4,
              [True] * 4),
        Group(page, ["(1, 1)"], {"point": [1.0]}, [1.0], [0.0], [False], [5], [True]),
    ])
    named = Sample(id="3", prompt="a hostile image name", images=[IMAGE_NAME], fields=fields)
    run.log_rollouts(2, [Group(named, ["(1, 1)"], {"point": [1.0]}, [1.0], [0.0], [False], [5], [True])], media=False)
    for step in (1, 2):
        run.log_metrics(step, {"reward/mean": 0.5, f"reward/{REWARD}\ud800": 0.1})
    run.write_json("config.json", {"task": TASK})
    os.symlink(tmp_path / "secret.txt", run.root / "link.txt")
    os.symlink(tmp_path, run.root / "linkdir")
    return run.root


def test_visible_marks_what_a_text_box_would_hide():
    assert visible(CONTROL) == CONTROL_SHOWN
    assert visible("tab\tand\nnewline stay, \u2028 too") == "tab\tand\nnewline stay, \u2028 too"
    assert visible(HTML) == HTML and visible("") == ""


def test_a_long_text_is_cut_with_its_length_and_source():
    assert for_display("abcdef", "rollouts/step_000001.jsonl", limit=4) == (
        "abcd\n\n[cut for display: the first 4 of 6 characters are shown; rollouts/step_000001.jsonl holds the "
        "whole text]")
    assert for_display("ab\x00d", "f", limit=4) == "ab␀d"  # at the limit: whole, but visible


def test_markdown_literal_escapes_every_punctuation_mark_on_one_line():
    assert markdown_literal("a <b>\n\n[c](d:e) *f* \x1b") == "a \\<b\\> \\[c\\]\\(d\\:e\\) \\*f\\* ␛"
    escaped = markdown_literal(IMAGE_NAME)
    assert escaped.replace("\\", "") == IMAGE_NAME  # the name has no backslash: removing the escapes gives it back
    assert all(escaped[i - 1] == "\\" for i, c in enumerate(escaped) if not c.isalnum() and c not in " \\")


def test_viewer_shows_hostile_records_as_text(hostile_run):
    viewer = Viewer(hostile_run)
    step1 = viewer.rollouts(1)
    samples = tables.chosen_samples(step1, tables.ALL_GROUPS, "failures first")
    frame = tables.sample_frame(step1, samples)  # a lone surrogate in a completion used to fail here
    assert frame["text"].tolist()[2:4] == [CONTROL_PREVIEW, BIG[:tables.PREVIEW_CHARS] + "…"]
    assert REWARD[:tables.HEADER_CHARS] + "…" in frame.columns  # cut: a long header would fill the table's window
    shown = [viewer.sample_view(step1, s) for s in samples[:4]]
    assert [completion for _, _, completion, _, _ in shown[:3]] == [HTML, MARKDOWN, CONTROL_SHOWN]
    big = shown[3][2]
    assert big == BIG[:DISPLAY_CHARS] + (f"\n\n[cut for display: the first 50,000 of 1,048,576 characters are "
                                         f"shown; rollouts/step_000001.jsonl holds the whole text]")
    assert shown[0][1] == PROMPT + "\n\n[ground truth] " + ANSWER
    assert shown[0][0] is not None  # the screenshot is still drawn

    picture, _, _, _, notes = viewer.sample_view(viewer.rollouts(2), viewer.rollouts(2).samples()[0])
    message = f"cannot draw this sample: {IMAGE_NAME} not found in the run directory"
    assert picture is None and notes == "⚠️ " + markdown_literal(message)
    assert markdown_literal(TASK) in viewer.run_info() and TASK not in viewer.run_info()
    frames, problems = viewer.plot_frames()
    assert problems == "" and f"reward/{REWARD}�" in set(frames[3]["series"])


def _get(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    """``(status, body)`` of one request (errors included; a stream cut short gives what came)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            try:
                return response.status, response.read()
            except http.client.IncompleteRead as cut:
                return response.status, cut.partial
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _routes(routes):
    """Every route of a FastAPI app, those of included routers too (FastAPI >= 0.12x keeps them unflattened)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _routes(inner.routes) if inner is not None else [route]


def _fill(path: str, payload: str) -> str:
    """``path`` with each ``{param}`` replaced by ``payload``: raw for a ``{param:path}``, else percent-encoded."""
    out, rest = "", path
    while "{" in rest:
        head, _, tail = rest.partition("{")
        param, _, rest = tail.partition("}")
        out += head + (payload if param.endswith(":path") else urllib.parse.quote(payload, safe=""))
    return out + rest


STREAMS = ("/heartbeat/", "/dev/reload")
"""Routes that hold the connection open (server-sent events); they read no files."""


def test_no_route_serves_a_file_it_should_not(hostile_run, tmp_path, port, monkeypatch):
    """Every GET route the server has, each path parameter filled with each traversal, absolute path, encoding and
    symlink below: none returns the secret next to the run, /etc/passwd, a file of Gradio's examples cache, or the
    HTML page in the run's ``media/``; the file routes refuse every file of the run itself; uploads are refused and
    no component has a server function to call."""
    from mmrl.demo.app import launch

    cwd = tmp_path / "cwd"
    (cwd / ".gradio" / "cached_examples").mkdir(parents=True)
    (cwd / ".gradio" / "cached_examples" / "secret.txt").write_text(SECRET)
    monkeypatch.chdir(cwd)
    secret = str(tmp_path / "secret.txt")
    rel = secret.lstrip("/")
    run = str(hostile_run)
    own = [f"{run}/config.json", f"{run}/metrics.jsonl", f"{run}/rollouts/step_000001.jsonl",
           *(str(p) for p in (hostile_run / "media").iterdir())]
    assert any(p.endswith("page.html") for p in own) and any(p.endswith("shot.png") for p in own)
    payloads = [secret, "/" + secret, urllib.parse.quote(secret, safe=""), "../" * 16 + rel,
                "%2e%2e%2f" * 16 + rel, "..%2f" * 16 + rel, "%252e%252e%252f" * 16 + rel,
                "..\\" * 16 + rel.replace("/", "\\"), f"{run}/../secret.txt", f"{run}/%2e%2e/secret.txt",
                f"{run}/link.txt", f"{run}/linkdir/secret.txt", "/etc/passwd", "../" * 16 + "etc/passwd",
                str(cwd / ".gradio/cached_examples/secret.txt"), ".gradio/cached_examples/secret.txt", *own]
    app = launch(hostile_run, port=port, block=False)
    try:
        base = f"http://127.0.0.1:{port}"
        routes = [r for r in _routes(app.app.routes) if "GET" in (getattr(r, "methods", None) or ())]
        assert any(r.path.endswith("/file={path_or_url:path}") for r in routes)  # the sweep sees Gradio's routes
        leaks = []
        for route in routes:
            if any(s in route.path for s in STREAMS):
                continue
            for payload in payloads if "{" in route.path else [""]:
                url = base + _fill(route.path, payload)
                status, body = _get(url)
                if SECRET.encode() in body or b"root:x:0:0" in body or SERVED_PAGE.encode() in body:
                    leaks.append(url)
                if "/file" in route.path and status not in (403, 404):
                    leaks.append(f"{url}: {status}")
        assert leaks == []
        upload = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.html\"\r\n\r\n"
                  + SERVED_PAGE.encode() + b"\r\n--b--\r\n")
        assert _get(base + "/gradio_api/upload", "POST", upload,
                    {"Content-Type": "multipart/form-data; boundary=b"})[0] == 413
        calls = [json.dumps({"session_hash": "s", "component_id": block, "fn_name": fn, "data": "/"}).encode()
                 for block in app.blocks for fn in ("ls", "upload", "get_file")]
        assert {_get(base + "/gradio_api/component_server", "POST", call, {"Content-Type": "application/json"})[0]
                for call in calls} == {404}
    finally:
        app.close()


@pytest.mark.slow
def test_hostile_text_is_shown_as_text_in_the_browser(hostile_run, port, page):
    """One browser session over the hostile run: every payload is on the page as literal text, nothing it carries
    runs or loads, the megabyte completion comes back cut with its marker, and the picture is served."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    from mmrl.demo.app import launch

    app = launch(hostile_run, port=port, block=False, refresh_seconds=60)
    base = f"http://127.0.0.1:{port}/"
    browser = page.driver
    try:
        browser.get(base)
        page.wait_text("#run-info", "2 steps with rollouts")
        assert TASK in browser.find_element(By.CSS_SELECTOR, "#run-info").text
        page.wait_text("#notes-a", f"cannot draw this sample: {IMAGE_NAME} not found")  # panel A: step 2
        page.wait(lambda d: len(page.rows("samples-b")) == 5)  # panel B: step 1
        text = page.header("samples-b").index("text")
        assert REWARD[:tables.HEADER_CHARS] + "…" in page.header("samples-b")
        previews = [row[text] for row in page.rows("samples-b")][:4]
        assert previews == [HTML[:tables.PREVIEW_CHARS] + "…", MARKDOWN[:tables.PREVIEW_CHARS] + "…", CONTROL_PREVIEW,
                            BIG[:tables.PREVIEW_CHARS] + "…"]
        page.wait(lambda d: page.value("completion-b") == HTML)
        assert page.value("prompt-b") == PROMPT + "\n\n[ground truth] " + ANSWER
        assert f"reward: {REWARD}" in [row[0] for row in page.rows("rewards-b")]
        for row, expected in ((1, MARKDOWN), (2, CONTROL_SHOWN)):
            page.click_cell("samples-b", row, text)
            page.wait(lambda d: page.value("completion-b") == expected)
        page.click_cell("samples-b", 3, text)
        marker = "[cut for display: the first 50,000 of 1,048,576 characters are shown"
        page.wait(lambda d: marker in page.value("completion-b"))
        assert page.value("completion-b").startswith(BIG[:DISPLAY_CHARS] + "\n\n" + marker)

        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert  # noqa: B018  (no alert() ran)
        found = browser.execute_script("""const away = url => !url.startsWith(location.origin);
        return {
            pwned: window.__pwned === undefined ? null : String(window.__pwned),
            iframes: document.querySelectorAll('iframe').length,
            scripts: [...document.scripts].filter(s => s.textContent.includes('__pwned')).length,
            handlers: document.querySelectorAll('[onerror], [onload]').length,
            links: [...document.querySelectorAll('a[href]')].map(a => a.href).filter(away),
            images: [...document.images].map(i => i.src),
            loaded: performance.getEntriesByType('resource').map(e => e.name).filter(away),
        }""")
        assert found == {"pwned": None, "iframes": 0, "scripts": 0, "handlers": 0, "links": [],
                         "images": found["images"], "loaded": []}
        assert found["images"] and all(src.startswith(base + "gradio_api/file=") for src in found["images"])
        picture = browser.find_element(By.CSS_SELECTOR, "#picture-b img")
        page.wait(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture))
        status, body = _get(picture.get_attribute("src"))
        assert status == 200 and body.startswith(b"\x89PNG")  # the run's screenshot, as drawn, is served
        page.screenshot("demo_hostile.png")
    finally:
        app.close()
