"""Every subcommand, driven with bad values as a user would type them: one error line naming the problem,
exit status 1 (or argparse's 2 for a malformed flag), never a traceback. No export is needed: these inputs are
refused before any model runs."""

from __future__ import annotations

import numpy as np
import pytest

from csfm_edge import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "garbage.onnx").write_bytes(b"not a graph")
    (folder / "garbage.pth").write_bytes(b"not a checkpoint")
    np.save(folder / "rec.npy", np.zeros((2, 5000), np.float32))
    (folder / "results.json").write_text("{}")
    return folder


CASES = [  # (argv with {d} for the folder, what stderr must say)
    (["export", "--size", "huge", "--out", "{d}/x"], "huge"),
    (["export", "--size", "tiny", "--precision", "fp8", "--out", "{d}/x"], "fp8"),
    (["export", "--size", "tiny", "--data", "{d}/missing", "--out", "{d}/x"], "missing"),
    (["export", "--size", "tiny", "--out", "{d}/results.json"], "results.json is a file, not a folder"),
    (["verify", "{d}/garbage.onnx"], "garbage.onnx"),
    (["verify", "{d}/nothing.onnx"], "nothing.onnx"),
    (["build", "{d}/garbage.onnx", "--target", "rtx-sm86"], "garbage.onnx"),
    (["info", "{d}/garbage.onnx"], "garbage.onnx"),
    (["info", "{d}/nothing.onnx"], "nothing.onnx"),
    (["run", "{d}/garbage.onnx", "{d}/rec.npy", "--fs", "250", "--leads", "I,II"], "garbage.onnx"),
    (["run", "{d}/garbage.onnx", "{d}/missing.npy"], "missing.npy"),
    (["run", "{d}/garbage.pth", "{d}/rec.npy", "--fs", "250", "--leads", "I,II"], "garbage.pth"),
    (["run", "{d}/garbage.pth", "{d}/rec.npy", "--fs", "250", "--leads", "I,II", "--device-id", "1"], "picks a GPU"),
    (["run", "{d}/garbage.pth", "{d}/rec.npy", "--fs", "250", "--leads", "I,II", "--cuda-graph"], "TensorRT"),
    (["run", "{d}/garbage.pth", "{d}/rec.npy", "--fs", "250", "--leads", "I,II", "--threads", "0"], "threads"),
    (["bench", "{d}/garbage.onnx", "--batch", "0"], "batch"),
    (["bench", "{d}/garbage.onnx", "--batch", "1", "--duration-s", "0.1"], "nothing was benchmarked"),
    (["bench", "{d}/garbage.onnx", "--time", "5000"], "5000"),
    (["bench", "{d}/garbage.onnx", "--lead-sets", "bogus"], "bogus"),
    (["bench", "{d}/garbage.onnx", "--provider", "bogus"], "bogus"),
    (["bench", "{d}/garbage.onnx", "--threads", "0", "--duration-s", "0.1"], "threads"),
    (["bench", "{d}/garbage.onnx", "--streams", "0", "--duration-s", "0.1"], "streams"),
    (["bench-report", "{d}/missing.json", "--out", "{d}/report"], "missing.json"),
    (["triton-repo", "{d}/garbage.onnx", "--out", "{d}/repo"], "garbage.onnx"),
    (["triton-repo", "{d}/garbage.onnx", "--out", "{d}/repo", "--lead-sets", "bogus"], "bogus"),
    (["serve"], "ARTIFACT or --repository"),
    (["serve", "--repository", "{d}/missing"], "missing"),
    (["doctor", "{d}/garbage.onnx", "--data", "{d}/missing"], "missing"),
    (["tune", "{d}/missing"], "missing"),
    (["tune", "{d}/garbage.onnx", "--batch", "0"], "batch"),
    (["tune", "{d}/garbage.onnx", "--rounds", "0"], "rounds"),
    (["sign", "{d}/garbage.onnx", "--key", "{d}/missing.pem"], "garbage.onnx"),
    (["sign", "{d}/nothing.onnx", "--key", "{d}/missing.pem"], "nothing.onnx"),
    (["info", "{d}/garbage.onnx", "--trust", "{d}/missing.pem"], "missing.pem"),
    (["gateway", "{d}/garbage.onnx"], "--lsl"),
    (["gateway", "{d}/garbage.onnx", "--lsl", "--out", "{d}/ward.csv"], ".parquet"),
    (["gateway", "{d}/garbage.onnx", "--lsl", "--out", "{d}/results.json"], "exists"),
    (["gateway", "{d}/garbage.onnx", "--lsl", "--hop", "0"], "--hop"),
    (["gateway", "{d}/garbage.onnx", "--lsl", "--max-batch", "0"], "--max-batch"),
    (["gateway", "{d}/garbage.onnx", "--lsl", "--duration", "-1"], "--duration"),
    (["gateway", "{d}/garbage.onnx", "--lsl", "--lead-map", "{d}/missing.json"], "missing.json"),
    (["gateway", "{d}/garbage.onnx", "--lsl", "--duration", "1"], "garbage.onnx"),
]


@pytest.mark.parametrize("argv, says", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_values_end_in_one_line(files, capsys, argv, says):
    code = cli.main([a.replace("{d}", str(files)) for a in argv])
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # progress lines may precede it
    assert code == 1, err
    assert "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith(f"csfm-edge {argv[0]}: error:") and says in errors[0], err


def test_unknown_choices_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "x.onnx", "rec.npz", "--provider", "tpu"])
    assert exc.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err


def test_every_subcommand_is_driven_here():
    driven = {argv[0] for argv, _ in CASES} | {"env"}
    assert driven >= {command.name for command in cli.COMMANDS}
