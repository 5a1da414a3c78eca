import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgclass.cli import main
from imgclass.config import AugmentConfig, TrainConfig
from imgclass.html_report import REPORT, _augmented_samples, build_report, write_report
from imgclass.training import train
from imgclass.val_predictions import VAL_PREDICTIONS, ValPredictions, predict_validation
from tests.conftest import make_class_tree

SECTIONS = [
    "summary",
    "data",
    "config",
    "curves",
    "per-class",
    "confusion",
    "wrong",
    "calibration",
    "augmented",
]
# Class and file names a page must show as text, never run: every class has the same colour, so
# the model cannot tell them apart and some validation images are predicted wrongly.
NASTY = {
    "<b>bold": (120, 120, 120),
    'quote"&amp;': (120, 120, 120),
    "<svg onload=alert(1)>": (120, 120, 120),
}


@pytest.fixture(scope="module")
def nasty_run(tmp_path_factory):
    """A short run on classes the model cannot separate, named and filed with HTML in the names."""
    base = tmp_path_factory.mktemp("report")
    data = make_class_tree(base / "data", per_class=10, size=20, classes=NASTY)
    odd = data / "<b>bold" / "<b>bold_000.jpg"
    odd.rename(odd.with_name("<img src=x onerror=alert(2)>.jpg"))
    result = train(
        data,
        base / "run",
        image_size=16,
        epochs=2,
        batch_size=8,
        seed=3,
        val_split=0.4,
        recipe="seed",
    )
    return result.run_dir


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/\w+;base64,([^"]+)"', html)]


def test_train_writes_the_report_and_the_validation_probabilities(nasty_run):
    html = (nasty_run / REPORT).read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert "<svg" not in html and "<b>bold" not in html and "<img src=x" not in html
    assert "&lt;svg onload=alert(1)&gt;" in html and "quote&#34;&amp;amp;" in html
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # no external resource
    for image in _images(html):
        Image.open(io.BytesIO(image)).verify()
    classes = sorted(NASTY)
    stored = ValPredictions.read(nasty_run / VAL_PREDICTIONS, classes)
    split = json.loads((nasty_run / "split.json").read_text())
    assert stored.paths == [e["path"] for e in split["val"]]
    assert [classes[i] for i in stored.labels] == [e["label"] for e in split["val"]]
    assert np.allclose(stored.probabilities.sum(axis=1), 1, atol=1e-4)
    evaluation = json.loads((nasty_run / "evaluation.json").read_text())
    predicted = stored.probabilities.argmax(axis=1)
    assert np.mean(predicted == stored.labels) == pytest.approx(evaluation["accuracy"])
    assert (predicted != stored.labels).any()  # so the wrong-image section has thumbnails
    wrong = re.search(r'<section id="wrong">.*?</section>', html, re.S).group()
    assert len(_images(wrong)) == min(12, int((predicted != stored.labels).sum()))


def test_report_command_recomputes_missing_predictions_from_the_model(nasty_run, tmp_path):
    run = _copy(nasty_run, tmp_path)
    stored = ValPredictions.read(run / VAL_PREDICTIONS, sorted(NASTY))
    (run / VAL_PREDICTIONS).unlink()
    (run / REPORT).unlink()
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert f"report written to {run / REPORT}" in result.output and "lacks" not in result.output
    gone = _copy(nasty_run, tmp_path / "gone")
    config = json.loads((gone / "config.json").read_text())
    (gone / "config.json").write_text(json.dumps({**config, "data_dir": str(tmp_path / "no")}))
    result = CliRunner().invoke(main, ["report", str(gone)])
    assert result.exit_code == 0
    assert (
        f"report.html lacks augmented training samples: data folder {tmp_path / 'no'} not "
        "found" in result.output
    )
    again = ValPredictions.read(run / VAL_PREDICTIONS, sorted(NASTY))
    assert again.paths == stored.paths and (again.labels == stored.labels).all()
    assert np.allclose(again.probabilities, stored.probabilities, atol=1e-5)
    html = (run / REPORT).read_text(encoding="utf-8")
    assert "This report lacks" not in html


def test_report_of_a_folder_that_is_no_run_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert f"Error: {tmp_path / 'config.json'}: missing (is {tmp_path} an imgclass run?)" in (
        result.output
    )


def test_report_without_the_data_folder_says_which_images_are_missing(nasty_run, tmp_path):
    run = _copy(nasty_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    gone = tmp_path / "moved away"
    config["data_dir"] = str(gone)
    (run / "config.json").write_text(json.dumps(config))
    result = write_report(run)
    assert any(
        line.startswith("wrong predictions:") and str(gone) in line for line in result.missing
    )
    assert any(line.startswith("augmented training samples:") for line in result.missing)
    html = result.path.read_text(encoding="utf-8")
    assert f"data folder {gone} not found" in html
    assert "calibration error" in html.lower()  # the stored probabilities still serve
    (run / VAL_PREDICTIONS).unlink()  # and without them nothing can be recomputed: said so
    with pytest.raises(FileNotFoundError, match="not found"):
        predict_validation(run)
    _, missing = build_report(run)
    assert any(VAL_PREDICTIONS in line and "cannot be recomputed" in line for line in missing)


def test_a_changed_validation_file_is_left_out_of_the_recomputed_predictions(nasty_run, tmp_path):
    run = _copy(nasty_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    data = shutil.copytree(config["data_dir"], tmp_path / "data")
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(data)}))
    paths = ValPredictions.read(run / VAL_PREDICTIONS, sorted(NASTY)).paths
    Image.new("RGB", (20, 20), (1, 2, 3)).save(data / paths[0], format="JPEG")
    assert predict_validation(run).paths == paths[1:]


def test_augmented_samples_go_through_the_training_augmentation_mixup_included(nasty_run):
    config = json.loads((nasty_run / "config.json").read_text())
    split = json.loads((nasty_run / "split.json").read_text())
    classes = sorted(NASTY)
    plain = TrainConfig(image_size=16, augment=AugmentConfig(hflip=False, rotation=0, zoom=0))
    samples, why = _augmented_samples(plain, Path(config["data_dir"]), split["train"], classes)
    assert why is None and len(samples) == len(split["train"])  # fewer than AUGMENTED_SHOWN
    assert {s["label"] for s in samples} == set(classes)
    mixed = plain.replace(augment={"mixup": 1.0})
    samples, _ = _augmented_samples(mixed, Path(config["data_dir"]), split["train"], classes)
    shares = [re.findall(r" (\d\.\d\d)(?: \+ |$)", s["label"]) for s in samples]
    assert all(abs(sum(map(float, found)) - 1) < 0.02 for found in shares)
    assert any(len(found) == 2 for found in shares)  # two classes blended


def test_report_renders_in_headless_chromium(nasty_run, browser):
    browser.get((nasty_run / REPORT).as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    for section in SECTIONS:
        element = browser.find_element(By.ID, section)
        assert element.is_displayed() and element.size["height"] > 40, section
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    assert len(images) >= 3 + 2  # class counts, curves, reliability; thumbnails; samples
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert "<svg onload=alert(1)>" in browser.find_element(By.ID, "confusion").text
    with pytest.raises(NoAlertPresentException):  # no name in the page ran as a script
        _ = browser.switch_to.alert
