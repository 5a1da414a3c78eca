import subprocess
import sys

import imgclass


def test_public_api_is_the_library_behind_the_cli():
    from imgclass.checkpoint import load_model
    from imgclass.evaluation import evaluate
    from imgclass.predict import Predictor
    from imgclass.training import train

    assert imgclass.train is train and imgclass.evaluate is evaluate
    assert imgclass.load_model is load_model and imgclass.Predictor is Predictor


def test_api_on_a_trained_run(trained_run):
    loaded = imgclass.load_model(trained_run)
    assert loaded.meta.classes == ["blue", "green", "red"]
    assert imgclass.Predictor(trained_run).classes == loaded.meta.classes


def test_importing_the_package_does_not_load_torch():
    code = "import sys, imgclass, imgclass.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
