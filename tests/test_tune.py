"""``csfm-edge tune`` and ``Session.open(FOLDER)``: measured choice, fingerprint, default rule, broken records."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import DATA, quiet

from csfm_edge.bench.tune import TuneConfig, tune
from csfm_edge.cli import main
from csfm_edge.errors import ArtifactError, ParameterError
from csfm_edge.runtime import Session
from csfm_edge.runtime.backends.openvino import openvino_available
from csfm_edge.runtime.manifest import read_manifest
from csfm_edge.runtime.tuned import TUNED_NAME, Candidate, default_setting, fingerprint, fingerprint_differences

pytestmark = pytest.mark.skipif(not openvino_available(), reason="tune's CPU candidates need the 'openvino' extra")

QUICK = {"lead_sets": ["ii+ppg"], "batches": [2], "rounds": 2, "warmup_s": 0.05, "duration_s": 0.2,
         "progress": quiet}


@pytest.fixture(scope="module")
def tuned_folder(tiny_artifacts, tmp_path_factory, data_dir):
    """A copy of the Tiny export folder, tuned over OpenVINO f32/bf16 and ONNX Runtime CPU."""
    folder = tmp_path_factory.mktemp("tuned")
    for path in tiny_artifacts.values():
        shutil.copy(path, folder / path.name)
        shutil.copy(path.with_suffix(".json"), folder / path.with_suffix(".json").name)
    record = tune(TuneConfig([folder], providers=["openvino", "cpu"], inference_precisions=["f32", "bf16"],
                             data_dir=data_dir, **QUICK))
    return folder, record


@pytest.mark.slow
def test_tune_writes_a_choice_that_session_opens(tuned_folder):
    folder, record = tuned_folder
    saved = json.loads((folder / TUNED_NAME).read_text())
    assert saved["choice"] == record["choice"] and saved["fingerprint"] == fingerprint()
    labels = [row["label"] for row in record["candidates"]]
    assert labels[0].startswith(record["choice"]["setting"]["artifact"])  # the best score is the choice
    for row in record["candidates"]:  # every timed candidate passed accuracy and has every round's median
        assert min(row["min_cosine_vs_fp32"].values()) >= 0.99
        assert all(len(v["rounds"]) >= 1 and v["min"] <= v["median"] <= v["max"] for v in row["latency_ms"].values())
    assert any(s["candidate"] == "PyTorch fallback" for s in record["skipped"])
    with Session.open(folder) as session:
        info = session.info()
    assert info["selection"]["source"] == "tuned"
    assert info["selection"]["choice"].startswith(record["choice"]["setting"]["artifact"])


def _copy_with_edited_record(folder, moved, edit) -> None:
    """The tuned folder copied to ``moved`` with ``edit`` applied to its tuned record (a fleet copy, a stale one)."""
    shutil.copytree(folder, moved)
    record = json.loads((moved / TUNED_NAME).read_text())
    edit(record)
    (moved / TUNED_NAME).write_text(json.dumps(record))


@pytest.mark.slow
def test_fingerprint_mismatch_opens_the_default_and_says_why(tuned_folder, tmp_path):
    folder, _ = tuned_folder
    moved = tmp_path / "fleet"

    def other_machine(record: dict) -> None:
        record["fingerprint"]["cpu"] = "Gateway CPU 9000"
        record["fingerprint"]["cpu_flags"] = [f for f in record["fingerprint"]["cpu_flags"] if not f.startswith("amx")]

    _copy_with_edited_record(folder, moved, other_machine)
    with Session.open(moved) as session:
        selection = session.info()["selection"]
    assert selection["source"] == "default"
    assert "another machine" in selection["reason"] and "Gateway CPU 9000" in selection["reason"]
    assert "rule-based default" in selection["reason"]


@pytest.mark.slow
def test_a_changed_artifact_makes_the_tuned_choice_stale(tuned_folder, tmp_path):
    folder, _ = tuned_folder
    moved = tmp_path / "stale"
    _copy_with_edited_record(folder, moved, lambda record: record["choice"].update(sha256="0" * 64))
    with Session.open(moved) as session:
        selection = session.info()["selection"]
    assert selection["source"] == "default" and "changed since tuning" in selection["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "not-a-record", "bad-setting"])
def test_a_corrupt_tuned_file_is_a_one_line_error(tuned_folder, tmp_path, damage, capsys):
    folder, _ = tuned_folder
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    text = (broken / TUNED_NAME).read_text()
    record = json.loads(text)
    record["choice"]["setting"]["provider"] = "quantum"
    (broken / TUNED_NAME).write_text({"truncate": text[: len(text) // 2], "not-a-record": "[1, 2]",
                                      "bad-setting": json.dumps(record)}[damage])
    with pytest.raises(ArtifactError, match="tune"):
        Session.open(broken)
    recording = DATA / "E07500.npz"
    if recording.exists():  # the CLI says it in one line, exit 1
        assert main(["run", str(broken), str(recording)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "tuned" in err


@pytest.mark.slow
def test_an_artifact_missing_the_accuracy_is_skipped_with_its_figures(tiny_artifacts, tmp_path, data_dir):
    """At a required cosine of 0.99999 the int8 graph misses and fp32 (in f32) passes: int8 is not timed."""
    folder = tmp_path / "strict"
    folder.mkdir()
    for precision in ("fp32", "int8"):
        path = tiny_artifacts[precision]
        shutil.copy(path, folder / path.name)
        shutil.copy(path.with_suffix(".json"), folder / path.with_suffix(".json").name)
    record = tune(TuneConfig([folder], providers=["openvino"], inference_precisions=["f32"], min_cosine=0.99999,
                             data_dir=data_dir, **QUICK))
    skipped = {s["candidate"]: s["reason"] for s in record["skipped"]}
    int8 = tiny_artifacts["int8"].name
    assert skipped[f"{int8} @openvino f32"].startswith("worst cosine vs fp32 0.9")
    assert [row["setting"]["artifact"] for row in record["candidates"]] == [tiny_artifacts["fp32"].name]


def test_tune_refuses_before_work(tiny_artifacts, tmp_path):
    folder = tiny_artifacts["fp32"].parent
    (tmp_path / "tuned.json").write_text("{}")
    with pytest.raises(Exception, match="already exists"):
        tune(TuneConfig([folder], out=tmp_path / "tuned.json", **QUICK))
    with pytest.raises(ParameterError, match="unknown provider"):
        tune(TuneConfig([folder], out=tmp_path / "new.json", providers=["gpu9"], **QUICK))
    with pytest.raises(ParameterError, match="a folder opens"):
        Session.open(folder, provider="cpu")


def test_default_rule_follows_the_cpu_units(tiny_artifacts):
    candidates = [Candidate(p, read_manifest(p)) for p in tiny_artifacts.values()]
    amx = ["amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f"]
    setting, why = default_setting(candidates, amx)
    assert (setting.artifact, setting.provider) == (tiny_artifacts["int8"].name, "openvino") and "int8" in why
    setting, _ = default_setting(candidates, ["avx512f", "avx512_bf16"])  # bf16 units, no int8 dot products
    assert (setting.artifact, setting.inference_precision) == (tiny_artifacts["fp16"].name, "bf16")
    setting, _ = default_setting(candidates, ["avx2", "fma"])
    assert (setting.artifact, setting.inference_precision) == (tiny_artifacts["fp32"].name, "f32")


def test_fingerprint_differences_name_what_changed():
    here = fingerprint()
    assert fingerprint_differences(here, here) == []
    other = {**here, "cpu_flags": [*here["cpu_flags"], "amx_fp16"], "libraries": {**here["libraries"],
                                                                                  "openvino": "1999.0"}}
    changes = fingerprint_differences(other, here)
    assert "CPU flags -amx_fp16" in changes and any(c.startswith("openvino 1999.0 when tuned") for c in changes)
