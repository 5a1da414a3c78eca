"""The service's web page in headless Chromium: pick photos, read the labels the page shows."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import pytest

from imgclass.predict import Predictor
from tests.conftest import make_class_tree, shared_dataset


def _cards(browser, count: int, timeout: float = 60) -> dict[str, dict]:
    """name -> {state, label, bars} of the page's result cards, once none is pending."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def read(driver):
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        if len(cards) < count or any(c.get_attribute("data-state") == "pending" for c in cards):
            return None
        return {
            c.get_attribute("data-name"): {
                "state": c.get_attribute("data-state"),
                "label": c.find_element(By.CSS_SELECTOR, ".label").text,
                "bars": [
                    b.get_attribute("data-label") for b in c.find_elements(By.CSS_SELECTOR, ".bar")
                ],
                "text": c.text,
            }
            for c in cards
        }

    return WebDriverWait(browser, timeout).until(read)


def _photos(tmp_path: Path) -> list[Path]:
    """A made photo always; a real one from flowers5 when the shared data sets are here."""
    photos = [next(make_class_tree(tmp_path / "made", per_class=1, seed=2).rglob("*.jpg"))]
    with contextlib.suppress(pytest.skip.Exception):
        photos.append(sorted((shared_dataset("flowers5") / "tulips").iterdir())[0])
    return photos


def test_pick_photos_and_read_their_labels(browser, served_run, trained_run, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{served_run}/")
    browser.get_log("browser")  # start from an empty console log
    photos = _photos(tmp_path)
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in photos))
    cards = _cards(browser, len(photos))
    expected = Predictor(trained_run).predict(photos, top_k=2)  # the service's --top-k is 2
    for photo, prediction in zip(photos, expected):
        card = cards[photo.name]
        assert card["state"] == "done", card
        assert card["label"] == prediction.label
        assert card["bars"] == prediction.labels
    assert "classes: blue, green, red" in browser.find_element(By.ID, "model").text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []

    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("not an image")
    browser.find_element(By.ID, "files").send_keys(str(not_a_photo))
    card = _cards(browser, len(photos) + 1)["notes.jpg"]
    assert card["state"] == "error" and "415" in card["text"] and "not an image" in card["text"]


def test_the_drop_zone_is_one_box_and_a_dropped_photo_shows_its_bars(
    browser, served_run, trained_run, tmp_path
):
    """Issue 14.4: what a person sees. The drop zone was an inline <label> with a border and
    padding: its box broke into one dashed fragment per line of text."""
    from selenium.webdriver.common.by import By

    browser.get(f"{served_run}/")
    drop = browser.find_element(By.ID, "drop")
    boxes = browser.execute_script(
        "return Array.from(arguments[0].getClientRects(), r => [r.width, r.height])", drop
    )
    width = browser.execute_script("return document.querySelector('main').clientWidth")
    assert len(boxes) == 1, boxes  # one box, not fragments
    assert boxes[0][0] >= 0.8 * width - 48 and 60 <= boxes[0][1] <= 250, boxes
    photo = _photos(tmp_path)[0]
    browser.execute_script(
        """
        const [name, data] = arguments;
        const transfer = new DataTransfer();
        transfer.items.add(new File([Uint8Array.from(atob(data), c => c.charCodeAt(0))], name,
                                    {type: "image/jpeg"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    """,
        photo.name,
        base64.b64encode(photo.read_bytes()).decode("ascii"),
    )
    card = _cards(browser, 1)[photo.name]
    expected = Predictor(trained_run).predict(photo, top_k=2)[0]
    assert card["state"] == "done" and card["bars"] == expected.labels
    fills = [f.size["width"] for f in browser.find_elements(By.CSS_SELECTOR, ".card .fill")]
    assert fills[0] > 0 and fills == sorted(fills, reverse=True)  # the best bar the longest
