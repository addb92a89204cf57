"""The engine's training pictures, checked as images: size (the number of panel rows), not blank."""

import numpy as np
from PIL import Image

from sciffusion.core.pictures import DPI, loss_picture, sample_metrics_picture, series, training_pictures


def _log(fields: bool) -> list[dict]:
    recs = [{"step": 0, "event": "start"}]
    for s in range(10, 210, 10):
        recs.append({"step": s, "loss": 1.0 / s, "lr": 1e-3 * min(1.0, s / 50)})
        if s % 50 == 0:
            v = {"val_loss": 1.2 / s, "val_loss_ema": 1.1 / s}
            if fields:
                v.update({"val_loss/pos": 0.7 / s, "val_loss/types": 0.5 / s})
            recs.append({"step": s, **v})
            recs.append({"step": s, "sample/valid": s / 200, "sample/stable": s / 400, "sample/network_calls": 20})
    return recs


def _picture(path) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20, "a blank picture"
    return img


def test_series_takes_the_records_with_a_finite_number():
    recs = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None}, {"step": 3, "loss": float("nan")},
            {"step": 4, "loss": True}, {"step": 5}, {"step": 6, "loss": 2}]
    assert series(recs, "loss") == ([1, 6], [0.5, 2.0])


def test_the_loss_picture_has_a_second_panel_only_for_several_fields(tmp_path):
    one = _picture(loss_picture(_log(False), tmp_path / "one.png"))
    two = _picture(loss_picture(_log(True), tmp_path / "two.png"))
    assert one.shape[:2] == (int(3.2 * DPI), 8 * DPI)
    assert two.shape[:2] == (int(6.4 * DPI), 8 * DPI)
    assert loss_picture([{"step": 0, "event": "start"}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_the_sample_metrics_picture_has_a_panel_per_metric_but_not_for_the_call_count(tmp_path):
    img = _picture(sample_metrics_picture(_log(False), tmp_path / "m.png"))
    assert img.shape[:2] == (int(2.8 * DPI), 2 * 4 * DPI)  # sample/valid and sample/stable side by side
    assert sample_metrics_picture(_log(False)[:3], tmp_path / "no.png") is None


def test_training_pictures_read_the_run_folders_log(tmp_path):
    import json

    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log(True)) + '{"step": 9')
    drawn = training_pictures(tmp_path)
    assert [p.name for p in drawn] == ["loss.png", "sample_metrics.png"]
    for p in drawn:
        _picture(p)


def test_the_class_accuracy_picture_has_bars_and_the_confusion_matrix(tmp_path):
    from sciffusion.core.features import confusion_matrix
    from sciffusion.core.pictures import class_accuracy_picture

    m = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]  # rows asked, columns given
    img = _picture(class_accuracy_picture(tmp_path / "a.png", m, ["a", "b", "c"], item="image"))
    assert img.shape[:2] == (int(4.8 * DPI), 13 * DPI)
