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
    sections: [...document.querySelectorAll('section > h2')].map(h => h.textContent.split(':')[0]),
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
    # grid.png, pixel_values.png, per_class_accuracy.png and the 12 samples, all decoded by the browser
    assert facts["images"] == facts["images_drawn"] == 3 + 12
    assert facts["tables"] >= 2 and facts["audio"] == 0 and facts["canvases"] == 0
    assert f"{metrics['fid']:.4g}" in facts["text"]
    assert "checkpoint sha256" in facts["text"] and "network calls per sample" in facts["text"]
    assert "model card" in facts["text"]


def test_a_molecules_samples_folder_has_a_3d_view_per_molecule(browser, artifacts, tmp_path):
    out = tmp_path / "qm9"
    sciffusion.sample("molecules", out, n=6, steps=5, progress=False)
    sciffusion.evaluate("molecules", [out])  # its checkpoint's data facts come from run.json
    assert json.loads((out / "evaluation" / "metrics.json").read_text())["checkpoint"]
    facts = _look(browser, report([out]), artifacts / "report-molecules.png")
    assert facts["errors"] == []
    _screenshot_ok(artifacts / "report-molecules.png")
    assert facts["canvases"] == facts["canvases_drawn"] == 6
    assert all(n >= 4 for n in facts["canvas_colours"])  # white, bonds and atoms of several elements
    assert facts["images"] == facts["images_drawn"] == 3  # grid.png, atom_types.png, bond_lengths.png
    assert "molecule_stability" in facts["text"] and "novelty" in facts["text"]


def test_the_molecule_viewer_turns_with_the_mouse(browser, tmp_path):
    out = tmp_path / "one"
    sciffusion.sample("molecules", out, n=1, steps=5, progress=False)
    page = browser.open(report([out]))
    try:
        grab = "(() => { const c = document.querySelector('canvas.molecule-view'); return c.toDataURL(); })()"
        before = page.evaluate(grab)
        page.evaluate("""(() => { const c = document.querySelector('canvas.molecule-view');
            const r = c.getBoundingClientRect(), x = r.left + 50, y = r.top + 50;
            c.dispatchEvent(new MouseEvent('mousedown', {clientX: x, clientY: y, bubbles: true}));
            window.dispatchEvent(new MouseEvent('mousemove', {clientX: x + 80, clientY: y + 30}));
            window.dispatchEvent(new MouseEvent('mouseup', {}));
            return true; })()""")
        turned = page.evaluate(grab)
        page.evaluate("document.querySelector('canvas.molecule-view').dispatchEvent(new MouseEvent('dblclick'))")
        assert turned != before and page.evaluate(grab) == before  # double-click resets the view
        assert page.console_errors == []
    finally:
        page.close()


DURATIONS = """Promise.all([...document.querySelectorAll('audio')].map(a => a.readyState >= 1 ? a.duration :
  new Promise((ok, fail) => { a.addEventListener('loadedmetadata', () => ok(a.duration));
                              a.addEventListener('error', () => fail(new Error('clip did not decode'))); })))"""


def test_an_audio_samples_folder_has_a_player_and_a_spectrogram_per_clip(browser, artifacts, tmp_path):
    from sciffusion.domains.audio.data import fsdd_root

    out = tmp_path / "sevens"
    sciffusion.sample("audio", out, n=3, steps=4, overrides=["sample.label=7"], progress=False)
    evaluated = fsdd_root() is not None  # the classifier's reference is FSDD
    if evaluated:
        sciffusion.evaluate("audio", [out])
    facts = _look(browser, report([out]), artifacts / "report-audio.png")
    assert facts["errors"] == []
    _screenshot_ok(artifacts / "report-audio.png")
    assert facts["audio"] == 3
    page = browser.open(out / "report.html")
    try:
        assert all(d > 0.2 for d in page.evaluate(DURATIONS))  # each clip decodes in the browser's player
    finally:
        page.close()
    # grid.png and a spectrogram per clip (+ the accuracy picture when evaluated)
    assert facts["images"] == facts["images_drawn"] == 1 + 3 + int(evaluated)
    assert "00000002: label 7" in facts["text"]


def test_a_training_run_folder_shows_its_pictures_events_and_checkpoints(browser, artifacts, tmp_path):
    run = tmp_path / "digits-run"
    shutil.copytree(ROOT / "domains" / "images" / "runs" / "digits", run)
    (tmp_path / "page.html").unlink(missing_ok=True)
    res = subprocess.run([str(CLI), "report", str(run), "--out", str(tmp_path / "page.html")], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not (run / "loss.png").exists()  # drawn from the committed log into the page only
    facts = _look(browser, tmp_path / "page.html", artifacts / "report-training.png")
    assert facts["errors"] == []
    assert facts["images"] == facts["images_drawn"] >= 1
    assert any("last logged values" in h for h in facts["headings"])
    both = report([run, _digits(tmp_path / "few", 4)], tmp_path / "both.html")  # a run and its samples, one page
    facts = _look(browser, both, tmp_path / "both.png")
    assert facts["errors"] == [] and facts["images"] == facts["images_drawn"] == 1 + 1 + 4  # loss, grid, samples
    assert facts["sections"] == ["training run", "samples"]


def _digits(out: Path, n: int) -> Path:
    sciffusion.sample("images", out, n=n, progress=False)
    return out


def test_bad_folders_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(InputError, match="neither a samples folder"):
        report([tmp_path])
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "run.json"))):
        report([tmp_path])
    res = subprocess.run([str(CLI), "report", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "no such folder" in res.stderr
    assert not (tmp_path / "nowhere").exists()


def test_evaluate_from_the_cli_keeps_its_record_beside_the_samples_or_where_told(tmp_path):
    out = tmp_path / "digits"
    sciffusion.sample("images", out, n=8, progress=False)
    res = subprocess.run([str(CLI), "evaluate", "images", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert record["metrics"] == json.loads(res.stdout) and record["sources"] == [str(out)]
    assert record["checkpoint"] == str(ROOT / "domains" / "images" / "weights" / "digits")  # from run.json
    assert sorted(p.name for p in (out / "evaluation").iterdir()) == ["metrics.json", "per_class_accuracy.png",
                                                                      "pixel_values.png"]
    again = subprocess.run([str(CLI), "evaluate", "images", str(out), "--json"], capture_output=True, text=True,
                           timeout=300)
    assert json.loads(again.stdout)["files"] == 8  # its own pictures are never read as samples
    elsewhere = tmp_path / "elsewhere"
    files = sorted(str(p) for p in out.glob("0*.png"))
    subprocess.run([str(CLI), "evaluate", "images", *files, "--out", str(elsewhere)], check=True, capture_output=True,
                   timeout=300)
    assert (elsewhere / "metrics.json").is_file()
    shutil.rmtree(out / "evaluation")
    subprocess.run([str(CLI), "evaluate", "images", str(out), "--no-write"], check=True, capture_output=True, timeout=300)
    assert not (out / "evaluation").exists()


# ----------------------------------------------------------------------------- without a browser


def test_the_page_escapes_what_the_folder_says_and_keeps_script_data_inert(tmp_path):
    """Captions, config values and file names are text, never markup; the molecules' JSON holds no
    character that could end its <script> block."""
    from sciffusion.core.report import _Page, _script_json

    out = _digits(tmp_path / "d", 2)
    run = json.loads((out / "run.json").read_text())
    run["config"]["sample"]["note"] = "<script>alert(1)</script>"
    (out / "run.json").write_text(json.dumps(run))
    html = report([out]).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<" not in _script_json({"atoms": [["<!--<script>", 0, 0, 0]]}) and "&" not in _script_json("a&b")
    page = _Page()
    with pytest.raises(InputError, match="bond \\[0, 5\\] names an atom outside 0..1"):
        page.molecule({"atoms": [["C", 0, 0, 0], ["O", 1.2, 0, 0]], "bonds": [[0, 5, 1]]}, tmp_path / "m.sdf")


def test_a_sample_that_cannot_be_shown_is_a_note_and_the_folder_is_only_read(tmp_path):
    out = _digits(tmp_path / "d", 4)
    (out / "00000001.png").write_bytes(b"not a png")  # damaged
    (out / "00000002.png").unlink()  # lost
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    rows[3]["file"] = "../../etc/passwd"  # a manifest must not make the page read outside the folder
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = sorted(p.name for p in out.iterdir())
    html = report([out], tmp_path / "page.html").read_text()
    assert sorted(p.name for p in out.iterdir()) == before
    assert html.count('class="note">00000001.png: not shown') == 1 and "00000002.png: not shown" in html
    assert "which is not a file inside the folder" in html and html.count('<figure class="item image">') == 1


def test_a_folder_still_being_generated_and_a_stale_evaluation_are_said_so(tmp_path):
    out = _digits(tmp_path / "d", 6)
    sciffusion.evaluate("images", [out])
    listed = json.loads((out / "evaluation" / "metrics.json").read_text())["pictures"]
    assert listed == ["pixel_values.png", "per_class_accuracy.png"]
    run = json.loads((out / "run.json").read_text())
    run.update(status="running")
    (out / "run.json").write_text(json.dumps(run))
    rows = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(rows[:4]) + "\n")
    html = report([out]).read_text()
    assert "generation is not complete: 4 of 6 samples are written so far" in html
    assert "these metrics scored 6 files; the folder now has 4 samples" in html


def test_evaluate_keeps_nothing_in_a_folder_that_is_not_a_samples_folder(tmp_path):
    out = _digits(tmp_path / "d", 4)
    mine = tmp_path / "mine"
    shutil.copytree(out, mine, ignore=shutil.ignore_patterns("run.json", "manifest.jsonl", ".parts", "grid.png"))
    before = sorted(p.name for p in mine.iterdir())
    assert sciffusion.evaluate("images", [mine])["files"] == 4
    assert sorted(p.name for p in mine.iterdir()) == before
    # a user's own evaluation/ folder (no sciffusion record) is scored as samples and never removed
    (out / "evaluation").mkdir()
    shutil.copy(out / "00000000.png", out / "evaluation" / "theirs.png")
    assert sciffusion.evaluate("images", [out], write=False)["files"] == 5
    sciffusion.sample("images", out, n=4, overwrite=True, progress=False)
    assert (out / "evaluation" / "theirs.png").is_file()


def test_drawing_the_run_picture_or_not_does_not_change_the_samples(tmp_path):
    """sample.grid_picture is not part of the folder's config hash: a folder made with it resumes and
    verifies without it, and a rerun that completes the folder draws the picture."""
    out = _digits(tmp_path / "d", 4)
    res = subprocess.run([str(CLI), "sample", "images", "-n", "4", "--out", str(out), "--verify",
                          "sample.grid_picture=false"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (out / "grid.png").unlink()
    (out / "00000003.png").unlink()
    sciffusion.sample("images", out, n=4, progress=False)
    assert (out / "grid.png").is_file()
