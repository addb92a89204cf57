"""Tests of tests/browser.py, the headless-Chromium helper: it renders local HTML, reports what a
person would see in the console, evaluates scripts, takes screenshots, and fails clearly (not by
hanging) when the browser dies."""

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import pytest


def _load_helper():
    # The suite runs with --import-mode=importlib, so tests/ is not on sys.path: load by path.
    name = "sciffusion_tests_browser"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("browser.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


browser_mod = _load_helper()
Browser, BrowserError, JavaScriptError = browser_mod.Browser, browser_mod.BrowserError, browser_mod.JavaScriptError

if browser_mod.find_chromium() is None:
    pytest.skip("Chromium not found: apt-get install chromium, or set SCIFFUSION_CHROMIUM", allow_module_level=True)

Image = pytest.importorskip("PIL.Image")

REPORT = """<!doctype html>
<html><head><meta charset="utf-8"><title>report</title>
<style>body { margin: 0; background: #fff; font: 14px sans-serif; } td { padding: 4px; }</style></head>
<body>
<h1>Run report</h1>
<table id="scores"><tr><th>step</th><th>loss</th></tr>
<tr><td>1</td><td>0.9</td></tr><tr><td>2</td><td>0.5</td></tr><tr><td>3</td><td>0.2</td></tr></table>
<canvas id="curve" width="320" height="160"></canvas>
<p id="total"></p>
<script>
  const ctx = document.getElementById("curve").getContext("2d");
  ctx.fillStyle = "rgb(200, 30, 30)";
  ctx.fillRect(0, 0, 320, 160);
  const losses = [...document.querySelectorAll("#scores tr td:nth-child(2)")].map(td => +td.textContent);
  window.meanLoss = losses.reduce((a, b) => a + b, 0) / losses.length;
  document.getElementById("total").textContent = "mean " + window.meanLoss.toFixed(3);
</script>
</body></html>
"""


def _write(tmp_path, name, html):
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


def test_find_chromium_honours_env(monkeypatch, tmp_path):
    found = browser_mod.find_chromium()
    assert found and os.access(found, os.X_OK)
    monkeypatch.setenv("SCIFFUSION_CHROMIUM", found)
    assert browser_mod.find_chromium() == found
    monkeypatch.setenv("SCIFFUSION_CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert browser_mod.find_chromium() is None


def test_local_report_renders_and_evaluates(browser, tmp_path):
    page = browser.open(_write(tmp_path, "report.html", REPORT), width=1024, height=700)
    try:
        assert page.console_errors == []
        assert page.evaluate("document.title") == "report"
        assert page.evaluate("document.querySelectorAll('#scores tr').length") == 4
        assert page.evaluate("(() => { const c = document.getElementById('curve');"
                             " return [c.width, c.height, c.getBoundingClientRect().width]; })()") == [320, 160, 320]
        assert page.evaluate("window.meanLoss") == pytest.approx((0.9 + 0.5 + 0.2) / 3)
        assert page.evaluate("document.getElementById('total').textContent") == "mean 0.533"
        # what was drawn is really there (the canvas is readable: same-origin, untainted)
        assert page.evaluate("Array.from(document.getElementById('curve').getContext('2d')"
                             ".getImageData(5, 5, 1, 1).data)") == [200, 30, 30, 255]
        assert page.evaluate("[innerWidth, innerHeight]") == [1024, 700]
        # JSON values, promises awaited, undefined is None
        assert page.evaluate("({a: [1, 'x', null, true]})") == {"a": [1, "x", None, True]}
        assert page.evaluate("new Promise(r => setTimeout(() => r(7), 10))") == 7
        assert page.evaluate("undefined") is None
        # a throwing expression raises with the exception's text, and is not a page error
        with pytest.raises(JavaScriptError, match="Cannot read properties of null"):
            page.evaluate("document.getElementById('nope').textContent")
        with pytest.raises(JavaScriptError, match="rejected on purpose"):
            page.evaluate("Promise.reject(new Error('rejected on purpose'))")
        assert page.console_errors == []
    finally:
        page.close()


def test_console_errors_and_exceptions_are_reported(browser, tmp_path):
    throws = _write(tmp_path, "throws.html",
                    "<p>x</p><script>function draw() { throw new Error('plot failed'); } draw();</script>")
    logs = _write(tmp_path, "logs.html",
                  "<p>y</p><script>console.log('just info'); console.warn('a warning');"
                  " console.error('bad value', 3); console.assert(1 === 2, 'math broke');</script>")
    page = browser.open(throws)
    assert len(page.console_errors) == 1
    assert page.console_errors[0].startswith("exception: Error: plot failed")
    assert "throws.html" in page.console_errors[0]  # the description carries the stack
    page.close()

    page = browser.open(logs)
    assert page.console_errors == ["console.error: bad value 3", "console.assert: math broke"]
    assert "log: just info" in page.console_messages and "warning: a warning" in page.console_messages
    page.close()


def test_missing_local_image_is_a_load_error(browser, tmp_path):
    page = browser.open(_write(tmp_path, "img.html", '<p>plot:</p><img src="plots/missing.png" alt="loss">'))
    try:
        # Chromium reports a failed file:// load through Log.entryAdded (source network, level error)
        missing = (tmp_path / "plots" / "missing.png").as_uri()
        assert page.console_errors == [f"network: Failed to load resource: net::ERR_FILE_NOT_FOUND ({missing})"]
        assert page.evaluate("document.querySelector('img').naturalWidth") == 0
    finally:
        page.close()


def test_screenshot_viewport_and_full_page(browser, tmp_path):
    page = browser.open(_write(tmp_path, "report.html", REPORT), width=800, height=600)
    shot = page.screenshot(tmp_path / "report.png")
    with Image.open(shot) as im:
        assert im.format == "PNG"
        assert im.size == (800, 600)  # content fits in the viewport
        rgb = im.convert("RGB")
        lo, hi = zip(*rgb.getextrema())
        assert max(hi) - min(lo) > 100  # not blank
        # the canvas' red is on screen, where the page says the canvas is
        x, y = (round(v) for v in page.evaluate(
            "(() => { const r = document.getElementById('curve').getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"))
        assert rgb.getpixel((x, y)) == (200, 30, 30)
        assert rgb.getpixel((790, 590)) == (255, 255, 255)
    page.close()

    tall = _write(tmp_path, "tall.html",
                  '<body style="margin:0"><div style="height:2000px;background:linear-gradient(#00f,#0f0)"></div></body>')
    page = browser.open(tall, width=640, height=480)
    with Image.open(page.screenshot(tmp_path / "tall.png")) as im:
        assert im.size == (640, 2000)  # the whole document, beyond the viewport
        rgb = im.convert("RGB")
        top, bottom = rgb.getpixel((320, 2)), rgb.getpixel((320, 1997))
        assert top[2] > 200 and bottom[1] > 200  # blue at the top, green at the bottom
    with Image.open(page.screenshot(tmp_path / "tall-viewport.png", full_page=False)) as im:
        assert im.size == (640, 480)
    page.close()


def test_opening_a_missing_file_fails_early(browser, tmp_path):
    with pytest.raises(FileNotFoundError):
        browser.open(tmp_path / "nope.html")


def test_script_that_never_finishes_times_out(browser, tmp_path):
    page = browser.open(_write(tmp_path, "idle.html", "<p>idle</p>"))
    start = time.monotonic()
    with pytest.raises(BrowserError, match="no answer from Chromium within 1 s"):
        page.evaluate("new Promise(() => {})", timeout=1)
    assert time.monotonic() - start < 5
    assert page.evaluate("1 + 1") == 2  # the browser is still usable
    page.close()


def test_killed_browser_gives_a_clear_error_not_a_hang(tmp_path):
    page_path = _write(tmp_path, "p.html", "<p>soon gone</p>")
    with Browser(timeout=10) as b:
        page = b.open(page_path)
        assert page.evaluate("2 * 21") == 42
        os.kill(b.proc.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(BrowserError, match="Chromium (exited with code -9|closed its DevTools pipe)"):
            page.evaluate("1")
        with pytest.raises(BrowserError, match="browser is gone|went away"):
            b.open(page_path)
        assert time.monotonic() - start < 5
    assert b.proc.poll() is not None
    assert b._tmp is None  # the temporary profile was removed


def test_close_removes_profile_and_process(tmp_path):
    b = Browser()
    b.start()
    profile_root = b._tmp
    assert Path(profile_root).is_dir() and b.alive
    b.close()
    b.close()  # idempotent
    assert b.proc.returncode is not None
    assert not Path(profile_root).exists()
