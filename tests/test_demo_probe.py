"""benchmarks/demo_probe.py's summary: alpha chosen on the validation scenes, gain on the test scenes."""

import importlib.util
import pathlib

import pytest

PROBE = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "demo_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("demo_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed(base, val_eft, test_eft):
    return {"val": {"base": 0.0, "dpo_noise": {"eft": val_eft}},
            "test": {"base": base, "dpo_noise": {"eft": test_eft}}}


def test_summary_takes_the_validation_alpha_and_the_smaller_on_ties(probe):
    results = {"seeds": {
        "0": _seed(70.0, {"0.2": 60.0, "0.6": 65.0}, {"0.2": 90.0, "0.6": 72.0}),   # val picks 0.6: +2
        "1": _seed(50.0, {"0.2": 61.0, "0.6": 61.0}, {"0.2": 46.0, "0.6": 99.0}),   # tie -> 0.2: -4
    }}
    line = probe.summarize(results)
    assert line.startswith("noise")
    assert "-1.0" in line and "+2.0, -4.0" in line


def test_f1_counts_like_pope(probe):
    import torch

    said = torch.tensor([True, True, False, False])
    truth = torch.tensor([True, False, True, False])
    assert probe.f1(said, truth) == 50.0  # tp 1, fp 1, fn 1


@pytest.mark.parametrize("argv, message", [
    (["--variants", "noise,shuffled"], "unknown variant 'shuffled'"),
    ([], "give a demo output folder"),
])
def test_bad_arguments_are_named(argv, message):
    import subprocess
    import sys

    extra = ["some-folder"] if argv else []
    done = subprocess.run([sys.executable, str(PROBE), *extra, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr


def test_unknown_pair_variant_is_refused(probe):
    with pytest.raises(ValueError, match="unknown variant 'x': choose from noise, blank, errors, labels"):
        probe.pair_builder("x", None, probe.DemoRecipe(), 1)
