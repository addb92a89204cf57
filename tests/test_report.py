"""sciffusion report: the self-contained HTML page, checked as a person sees it in a real headless
Chromium (tests/browser.py; skipped where Chromium is absent): it loads without console errors,
shows the tables and the pictures, and has the players and 3D views its samples need. A screenshot
per domain is kept in test-artifacts/."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sciffusion
from sciffusion.core.io import InputError
from sciffusion.core.report import report

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("sciffusion")

# what the page shows, read from the DOM after it loaded
FACTS = """(() => {
  const imgs = [...document.images];
  const canvases = [...document.querySelectorAll('canvas.molecule-view')];
  return {
    tables: document.querySelectorAll('table').length,
    headings: [...document.querySelectorAll('h2, h3')].map(h => h.textContent),
    images: imgs.length, images_drawn: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    audio: document.querySelectorAll('audio').length,
    canvases: canvases.length, canvases_drawn: canvases.filter(c => Number(c.dataset.drawn) > 0).length,
    canvas_colours: canvases.slice(0, 3).map(c => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, seen = new Set();
      for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
      return seen.size; }),
    text: document.body.innerText,
  };
})()"""


def _look(browser, page_path: Path, shot: Path) -> dict:
    page = browser.open(page_path, width=1280, height=900)
    try:
        facts = page.evaluate(FACTS)
        page.screenshot(shot)
        facts["errors"] = list(page.console_errors)
        return facts
    finally:
        page.close()


def _screenshot_ok(path: Path) -> None:
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[1] == 1280 and img.shape[0] >= 900 and img.std() > 10


def test_an_images_samples_folder_with_its_evaluation(browser, artifacts, tmp_path):
    out = tmp_path / "digits"
    sciffusion.sample("images", out, n=12, progress=False)
    metrics = sciffusion.evaluate("images", [out])
    page = report([out])
    assert page == out / "report.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html.replace("https://github.com", "")  # nothing to fetch
    facts = _look(browser, page, artifacts / "report-images.png")
    assert facts["errors"] == []
    _screenshot_ok(artifacts / "report-images.png")
    # grid.png, pixel_values.png, class_accuracy.png and the 12 samples, all decoded by the browser
    assert facts["images"] == facts["images_drawn"] == 3 + 12
    assert facts["tables"] >= 2 and facts["audio"] == 0 and facts["canvases"] == 0
    assert f"{metrics['fid']:.4g}" in facts["text"]
    assert "checkpoint sha256" in facts["text"] and "network calls per sample" in facts["text"]
    assert "model card" in facts["text"]


def test_a_training_run_folder_shows_its_pictures_events_and_checkpoints(browser, artifacts, tmp_path):
    run = tmp_path / "digits-run"
    shutil.copytree(ROOT / "domains" / "images" / "runs" / "digits", run)
    (tmp_path / "page.html").unlink(missing_ok=True)
    res = subprocess.run([str(CLI), "report", str(run), "--out", str(tmp_path / "page.html")], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (run / "loss.png").is_file()  # drawn from the committed log
    facts = _look(browser, tmp_path / "page.html", artifacts / "report-training.png")
    assert facts["errors"] == []
    assert facts["images"] == facts["images_drawn"] >= 1
    assert any("last logged values" in h for h in facts["headings"])


def test_bad_folders_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(InputError, match="neither a samples folder"):
        report([tmp_path])
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "run.json"))):
        report([tmp_path])
    res = subprocess.run([str(CLI), "report", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "no such folder" in res.stderr
    assert not (tmp_path / "nowhere").exists()
