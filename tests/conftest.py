"""Fixtures: tiny real image trees made on the fly, a cache under tmp, one trained run a session."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

# No example database: tests write only under pytest's temporary folders.
settings.register_profile("imgclass", database=None)
settings.load_profile("imgclass")

COLOURS = {"blue": (30, 60, 200), "red": (200, 40, 30), "green": (40, 180, 60)}


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/datasets (or $IMGCLASS_SHARED_DATASETS); skips the test when absent."""
    base = os.environ.get("IMGCLASS_SHARED_DATASETS")
    root = Path(base) if base else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not (root / name).exists():
        pytest.skip(f"{root / name} is absent (only developers and CI have shared/datasets)")
    return root / name


def make_class_tree(
    root: Path,
    per_class: int = 12,
    size: int = 24,
    seed: int = 0,
    classes: dict[str, tuple[int, int, int]] = COLOURS,
) -> Path:
    """root/<colour>/<n>.jpg: noisy squares of one colour per class, easy to learn."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size, size, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.jpg", quality=95)
    return root


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis' own files (its constants cache) under pytest's temporary folder, not the repo.

    Set here, before any test module is imported: Hypothesis fixes its folder on first use.
    """
    from hypothesis.configuration import set_hypothesis_home_dir

    factory = pytest.TempPathFactory.from_config(config, _ispytest=True)
    set_hypothesis_home_dir(factory.getbasetemp() / "hypothesis")
    # Ctrl-C as a user sends it, whatever started the suite: a background job of a shell
    # without job control inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt (nor do the imgclass processes the tests start, which inherit it)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IMGCLASS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def ctrl_c_after_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C (KeyboardInterrupt) in `train` once epoch `epoch` is saved, through the per-epoch
    hook train gives TensorBoard; monkeypatch.undo() ends it."""

    @contextlib.contextmanager
    def hooked(run_dir):
        def hook(stats):
            if stats.epoch == epoch:
                raise KeyboardInterrupt

        yield hook

    monkeypatch.setattr("imgclass.training.tensorboard", hooked)


@pytest.fixture(params=[False, True], ids=["fp32-cpu", "bf16-cpu"])
def native_bf16(request, monkeypatch) -> bool:
    """Each answer of runtime.cpu_has_native_bf16 in turn, through $IMGCLASS_NATIVE_BF16 (so a
    process the test starts follows it too): a test of the CPU-dependent choices sees both."""
    monkeypatch.setenv("IMGCLASS_NATIVE_BF16", "1" if request.param else "0")
    return request.param


# what a training in a test writes when the ONNX export and the HTML report are not under test
# (the export alone takes seconds)
QUICK = {"export": False, "report": False}


@pytest.fixture
def class_tree(tmp_path) -> Path:
    return make_class_tree(tmp_path / "data")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A real (short) training run on a 3-class tree, shared by the read-only tests."""
    from imgclass.training import train

    base = tmp_path_factory.mktemp("trained")
    data = make_class_tree(base / "data", per_class=16)
    result = train(
        data,
        base / "run",
        cache_dir=base / "cache",
        image_size=16,
        epochs=4,
        batch_size=8,
        seed=1,
        recipe="seed",
        keep_checkpoint=True,
    )  # test_checkpoint reads it
    return result.run_dir


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium driven by Selenium: Debian's chromium and chromium-driver (.ci/run).

    The browser's console log is kept: `browser.get_log("browser")` lists the page's errors.
    """
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(
            "chromium and chromedriver are not installed (.ci/run installs Debian's "
            "chromium and chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=driver), options=options
    )
    yield session
    session.quit()


@pytest.fixture(scope="session")
def exported_onnx(trained_run, tmp_path_factory) -> Path:
    """trained_run's model exported to ONNX (with its .onnx.json), outside the run directory."""
    from imgclass.export import export_onnx

    return export_onnx(trained_run, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="session")
def served_run(trained_run, tmp_path_factory):
    """`imgclass serve trained_run` as a real process on a loopback port; yields its base URL."""
    from tests.service import running_service

    with running_service(
        trained_run,
        tmp_path_factory.mktemp("serve"),
        "--max-upload-mb",
        "1",
        "--max-pixels",
        "1000000",
        "--top-k",
        "2",
    ) as url:
        yield url
