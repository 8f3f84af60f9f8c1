"""The command line: `fewstep sample`, `fewstep train` (`fewstep demo`: tests/test_demo.py)."""

import pytest

from fewstep.cli import main


@pytest.mark.parametrize("name", ["gmm-vp", "gmm-flow", "gmm-edm"])
def test_sample_prints_error_and_nfe(name, capsys):
    rc = main(
        [
            "sample",
            "--problem",
            name,
            "--solver",
            "ddim",
            "--nfe",
            "10",
            "--num-samples",
            "16",
            "--dim",
            "8",
            "--components",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "nfe       10 model calls (asked 10)" in out
    assert "rmse      mean" in out


def test_errors_exit_2_with_the_argument(capsys):
    assert main(["sample", "--nfe", "0"]) == 2
    assert "nfe" in capsys.readouterr().err


def test_train_writes_weights_and_a_record(tmp_path, capsys):
    # The quick demo itself runs in tests/test_demo.py.
    out = tmp_path / "models"
    rc = main(["train", "digits-classifier", "--steps", "2", "--out", str(out)])
    assert rc == 0
    assert f"record:  {out / 'digits-classifier.json'}" in capsys.readouterr().out
    assert (out / "digits-classifier.safetensors").exists()


def test_train_rejects_an_unknown_model(capsys):
    assert main(["train", "mnist-unet"]) == 2
    assert "unknown model 'mnist-unet'" in capsys.readouterr().err
