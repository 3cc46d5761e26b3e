"""The unclean cases of issue 24, each driven as the user drove it: an edited embedded manifest, resuming with
other settings, two runs on one output, a full disk, outputs onto artifacts, a busy port, missing packages, a
killed export, and wrong argument types. Each must end in one line (or a correct result), never a traceback,
a wrong table, a lost file or junk left behind."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from csfm_edge.cli import main
from csfm_edge.errors import ArtifactError, CsfmError, OutputError, ParameterError, ShapeError
from csfm_edge.fileio import exclusive, write_atomically
from csfm_edge.recordings.batch import BatchRequest, run_batch
from csfm_edge.runtime.session import Session
from csfm_edge.serving.triton_repo import TritonRepoRequest, write_repository

ROOT = Path(__file__).resolve().parents[1]


def _refused(argv: list[str], capsys) -> str:
    """Exit status 1 and a one-line error (no traceback); return that line."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _cli(*args: str, limit_bytes: int | None = None, missing: str | None = None) -> subprocess.CompletedProcess:
    """The CLI in its own process: with files limited to ``limit_bytes`` (every write past it fails, as on a
    full disk), or with the package ``missing`` made unimportable."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    code = ("import sys\n" + (f"sys.modules[{missing!r}] = None\n" if missing else "")
            + "from csfm_edge.cli import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                          preexec_fn=limit if limit_bytes else None, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return errors[0]


def _folder(tmp_path: Path, data_dir: Path, names=("E07500", "E07501", "E07502", "E07503")) -> Path:
    folder = tmp_path / "records"
    folder.mkdir()
    for name in names:
        shutil.copyfile(data_dir / f"{name}.npz", folder / f"{name}.npz")
    return folder


# --- an embedded manifest edited inside the .onnx (no sidecar) ----------------------------------------------

def _edited(source: Path, target: Path, edit) -> Path:
    """``source``'s graph with its embedded manifest changed by ``edit`` (a dict -> None), and no sidecar."""
    import onnx

    from csfm_edge.export.embed import set_embedded_manifest
    from csfm_edge.runtime.manifest import EMBEDDED_KEY

    model = onnx.load(str(source))
    [text] = [p.value for p in model.metadata_props if p.key == EMBEDDED_KEY]
    manifest = json.loads(text)
    edit(manifest)
    set_embedded_manifest(model, json.dumps(manifest, sort_keys=True))
    onnx.save(model, str(target))
    return target


def test_embedded_manifest_claims_the_graph_disproves_are_refused(tiny_artifacts, tmp_path, capsys):
    def base(m):
        m["model"]["size"] = "base"

    def base_widths(m):
        m["model"].update(size="base", depth=12, heads=12, mlp_dim=3072)

    def fp32(m):
        m["precision"] = "fp32"

    def wide(m):
        m["model"]["dim"] = 1024
        m["outputs"]["features"]["dims"] = ["batch", 1024]

    for source, edit, message in [("fp32", base, "size base has dim 768, depth 12"),
                                  ("fp32", base_widths, "6 attention blocks, not depth 12"),
                                  ("int8", fp32, "precision fp32, but the graph is quantized"),
                                  ("fp16", fp32, "holds float16 weights"),
                                  ("fp32", wide, "the graph's features are 768 wide, not 1024")]:
        artifact = _edited(tiny_artifacts[source], tmp_path / f"{source}-{edit.__name__}.onnx", edit)
        with pytest.raises(ArtifactError, match=message):
            Session.open(artifact, provider="cpu")
        assert message in _refused(["info", str(artifact)], capsys)  # info no longer reports the edited claims
    untouched = _edited(tiny_artifacts["int8"], tmp_path / "same.onnx", lambda m: None)
    assert main(["info", str(untouched)]) == 0 and "int8" in capsys.readouterr().out


def test_edits_no_graph_can_disprove_are_caught_by_the_signature(tiny_artifacts, tmp_path, capsys):
    pytest.importorskip("model_signing", reason="signing needs the sign extra")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "key.pem", tmp_path / "key.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    artifact = tmp_path / "model.onnx"  # deployed renamed, without its sidecar
    shutil.copyfile(tiny_artifacts["fp32"], artifact)
    assert main(["sign", str(artifact), "--key", str(private)]) == 0

    def trained(m):
        m["weights"] = {"source": "checkpoint", "name": "csfm_base.pth", "sha256": "0" * 64}
        m["preprocessing"]["ppg"]["order"] = 3

    _edited(artifact, artifact, trained)  # UNTRAINED label removed, PPG filter order changed: no graph shows it
    assert main(["info", str(artifact)]) == 0  # believed without a signature check ...
    capsys.readouterr()
    assert "model.onnx changed since it was signed" in _refused(["info", str(artifact), "--trust", str(public)],
                                                                capsys)  # ... refused with one


# --- run --out: resume, two writers, a full disk, a missing pyarrow -----------------------------------------

def _interrupted(artifact: Path, folder: Path, out: Path, after: int, hop_s: float = 10.0) -> Path:
    """A batch run stopped (Ctrl-C) after ``after`` records: its parts folder, as the user is left with."""
    class Interrupting(Session):
        calls = 0

        def score(self, prepared, batch_size=16):
            Interrupting.calls += 1
            if Interrupting.calls > after:
                raise KeyboardInterrupt
            return super().score(prepared, batch_size)

    session = Session.open(artifact, provider="cpu")
    session.__class__ = Interrupting
    with pytest.raises(KeyboardInterrupt):
        run_batch(BatchRequest(artifact, [folder], out=out, hop_s=hop_s, progress=False, workers=1), session)
    session.close()
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.glob("*.parquet"))) == after
    return parts


def test_resume_refuses_another_artifact_or_other_settings_and_redoes_damaged_parts(tiny_artifacts, tmp_path,
                                                                                   data_dir, capsys):
    folder = _folder(tmp_path, data_dir)
    out = tmp_path / "t.parquet"
    parts = _interrupted(tiny_artifacts["fp32"], folder, out, after=2)
    err = _refused(["run", str(tiny_artifacts["int8"]), str(folder), "--out", str(out), "--resume"], capsys)
    assert "used another artifact" in err and "remove the folder" in err
    err = _refused(["run", str(tiny_artifacts["fp32"]), str(folder), "--out", str(out), "--resume", "--hop", "5"],
                   capsys)
    assert "--hop (10.0, now 5.0)" in err
    assert not out.exists() and len(list(parts.glob("*.parquet"))) == 2  # nothing of the interrupted run lost

    damaged = sorted(parts.glob("*.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:200])  # truncated (a full disk, a bad copy)
    assert main(["run", str(tiny_artifacts["fp32"]), str(folder), "--out", str(out), "--resume",
                 "--provider", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "1 already scored (resumed); 1 damaged parts scored again" in said, said
    table = pq.read_table(out)
    assert table.num_rows == 4 and set(table.column("artifact_sha256").to_pylist()) == {
        json.loads(table.schema.metadata[b"csfm_edge"])["artifact_sha256"]}
    assert not parts.exists() and not list(tmp_path.glob(".t.parquet.lock"))


def test_a_second_run_on_the_same_out_is_told_another_is_writing(tiny_artifacts, tmp_path, data_dir, capsys):
    folder = _folder(tmp_path, data_dir, names=("E07500",))
    out = tmp_path / "t.parquet"
    with exclusive(out):  # the first run, still writing
        err = _refused(["run", str(tiny_artifacts["fp32"]), str(folder), "--out", str(out)], capsys)
        assert f"another csfm-edge run (pid {os.getpid()}) is writing it" in err
        assert not out.with_name("t.parquet.parts").exists()
    assert main(["run", str(tiny_artifacts["fp32"]), str(folder), "--out", str(out), "--provider", "cpu"]) == 0
    assert pq.read_table(out).num_rows == 1


def test_a_full_disk_is_one_line_and_leaves_nothing(tiny_artifacts, tmp_path, data_dir):
    folder = _folder(tmp_path, data_dir)
    for out in (tmp_path / "t.parquet", tmp_path / "r.json", tmp_path / "r.npz"):
        inputs = [str(folder)] if out.suffix == ".parquet" else [str(folder / "E07500.npz")]
        done = _cli("run", str(tiny_artifacts["fp32"]), *inputs, "--out", str(out), "--provider", "cpu",
                    limit_bytes=2_000)
        assert "cannot write" in _one_line(done)
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["records"], list(tmp_path.iterdir())


def test_missing_packages_name_the_install_and_leave_nothing(tiny_artifacts, tmp_path, data_dir):
    folder = _folder(tmp_path, data_dir, names=("E07500",))
    out = tmp_path / "t.parquet"
    err = _one_line(_cli("run", str(tiny_artifacts["fp32"]), str(folder), "--out", str(out), missing="pyarrow"))
    assert "pip install 'csfm-edge[table]'" in err and sorted(p.name for p in tmp_path.iterdir()) == ["records"]
    err = _one_line(_cli("triton-repo", str(tiny_artifacts["fp32"]), "--out", str(tmp_path / "repo"),
                         missing="onnx"))
    assert "pip install 'csfm-edge[export]'" in err and not (tmp_path / "repo").exists()
    err = _one_line(_cli("run", str(tiny_artifacts["fp32"]), str(folder / "E07500.npz"), missing="onnxruntime"))
    assert "pip install onnxruntime" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records"]


# --- every output path checked as run --out is ---------------------------------------------------------------

def test_bench_outputs_and_arguments_are_checked_before_any_case(tiny_artifacts, tmp_path, capsys):
    artifact = tmp_path / tiny_artifacts["fp32"].name
    for path in (tiny_artifacts["fp32"], tiny_artifacts["fp32"].with_suffix(".json")):
        shutil.copyfile(path, tmp_path / path.name)
    before = artifact.read_bytes()
    quick = ["--batch", "1", "--lead-sets", "ii", "--duration-s", "0.05", "--warmup-s", "0.01", "--provider", "cpu"]
    assert "an input of this run" in _refused(["bench", str(artifact), *quick, "--json", str(artifact)], capsys)
    assert artifact.read_bytes() == before  # the artifact is not overwritten with results
    results = tmp_path / "results.json"
    results.write_text("earlier results")
    assert "--force" in _refused(["bench", str(artifact), *quick, "--json", str(results)], capsys)
    assert results.read_text() == "earlier results"
    assert "batch must be a whole number > 0, got 0" in _refused(["bench", str(artifact), "--batch", "0"], capsys)
    assert "window length 2490 samples" in _refused(["bench", str(artifact), "--time", "2490"], capsys)
    assert "unknown lead set 'bogus'" in _refused(["bench", str(artifact), "--lead-sets", "bogus"], capsys)

    assert main(["bench", str(artifact), *quick, "--json", str(results), "--force"]) == 0
    capsys.readouterr()
    report = tmp_path / "report"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "is a file, not a folder" in _refused(["bench-report", str(results), "--out", str(a_file)], capsys)
    assert main(["bench-report", str(results), "--out", str(report)]) == 0
    capsys.readouterr()
    assert "--force" in _refused(["bench-report", str(results), "--out", str(report)], capsys)


def test_triton_repo_outputs_and_settings_are_checked_before_writing(tiny_artifacts, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    fp32 = str(tiny_artifacts["fp32"])
    assert "is a file, not a folder" in _refused(["triton-repo", fp32, "--out", str(a_file)], capsys)
    assert "is a file, not a folder" in _refused(["triton-repo", fp32, "--out", str(a_file / "repo")], capsys)
    assert "--max-queue-delay-us must be >= 0" in _refused(
        ["triton-repo", fp32, "--out", str(tmp_path / "r"), "--max-queue-delay-us", "-5"], capsys)
    with pytest.raises(CsfmError, match="unknown --provider 'bogus'"):  # the CLI's choices refuse it before this
        write_repository(TritonRepoRequest([tiny_artifacts["fp32"]], tmp_path / "r", platform="python",
                                           provider="bogus"))
    assert not (tmp_path / "r").exists()

    repo = tmp_path / "repo"
    assert main(["triton-repo", fp32, "--out", str(repo), "--lead-sets", "ii,12lead"]) == 0
    (repo / "mine").mkdir()
    (repo / "mine" / "config.pbtxt").write_text('name: "mine"\nbackend: "python"\n')  # a model of the user's
    assert main(["triton-repo", fp32, "--out", str(repo), "--lead-sets", "ii+ppg", "--force"]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["csfm-tiny-fp32-ii_ppg", "mine"]  # old lead sets gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.staging")]


# --- serve: a busy port, a port out of range, a host that is not here: said at once ---------------------------

def test_serve_refuses_busy_ports_and_bad_addresses_at_once(tiny_artifacts, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        err = _refused(["serve", str(tiny_artifacts["fp32"]), "--port", str(port - 1)], capsys)
        assert f"port {port} (gRPC) on 127.0.0.1 is in use" in err and time.monotonic() - started < 10
    for port in ("70000", "-1", "65535"):
        assert "must be 1 to 65533" in _refused(["serve", str(tiny_artifacts["fp32"]), "--port", port], capsys)
    assert "--host '999.1.1.1'" in _refused(["serve", str(tiny_artifacts["fp32"]), "--host", "999.1.1.1"], capsys)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "is a file, not a folder" in _refused(["serve", "--repository", str(a_file)], capsys)
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text("garbage {")
    assert "names no backend or platform" in _refused(["serve", "--repository", str(tmp_path / "repo")], capsys)


# --- a hard-killed export leaves no staging folder ----------------------------------------------------------

def test_staging_folder_of_a_killed_process_is_removed(tmp_path):
    code = ("import os, signal, sys\nfrom csfm_edge.fileio import staging_folder\n"
            "with staging_folder(sys.argv[1], '.csfm-export-') as f:\n"
            "    (f / 'traced.onnx').write_bytes(b'0' * 1_000_000)\n"
            "    print(f, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -signal.SIGKILL
    staging = Path(done.stdout.strip())
    assert staging.parent == tmp_path
    deadline = time.monotonic() + 20
    while staging.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not staging.exists()


# --- Session.embed with the wrong types: typed errors that name the cause -----------------------------------

def test_embed_argument_mistakes_are_typed_errors(tiny_artifacts):
    session = Session.open(tiny_artifacts["fp32"], provider="cpu")
    t = np.arange(2500) / 250
    ii, ppg = np.sin(2 * np.pi * 1.2 * t), np.cos(2 * np.pi * 1.1 * t)
    with pytest.raises(ShapeError, match="one number"):
        session.embed(np.float64(1.0), 250, ["II"])
    with pytest.raises(ShapeError, match="1 sampling rates for 2 leads"):
        session.embed([ii, ppg[::2]], [250], ["II", "PPG"])
    with pytest.raises(ShapeError, match="object array"):
        session.embed(np.array([ii, ppg[::2]], dtype=object), 250, ["II", "PPG"])
    with pytest.raises(ShapeError, match="drop the leading axis"):
        session.embed(np.stack([ii, ppg])[None], 250, ["II", "PPG"])
    with pytest.raises(ParameterError, match="max_gap_s"):
        session.embed(np.stack([ii, ppg]), 250, ["II", "PPG"], max_gap_s=-1)
    by_id = session.embed(np.stack([ii, ppg]), 250, ["1", "12"])  # ids as text, as the command line takes them
    assert by_id.leads == ["II", "PPG"]
    assert np.array_equal(by_id.features, session.embed(np.stack([ii, ppg]), 250, ["II", "PPG"]).features)
    with pytest.raises(OutputError, match="cannot write"):  # the one writer of user files says why, in one line
        write_atomically(Path("/proc/csfm-edge-cannot-write-here"), b"x")


# --- a long multi-rate EDF (bedside ECG 500 Hz + PPG 125 Hz) is read a segment at a time --------------------

@pytest.mark.slow
def test_long_multi_rate_edf_is_read_in_segments_equal_to_whole(tiny_artifacts, tmp_path, monkeypatch):
    pyedflib = pytest.importorskip("pyedflib", reason="EDF needs the edf extra")
    from pyedflib import highlevel

    from csfm_edge.recordings.readers import EdfLead, read_recording
    from csfm_edge.runtime import session as session_module

    minutes, rng = 40, np.random.default_rng(0)  # longer than LONG_RECORD_S
    t_ecg, t_ppg = np.arange(minutes * 60 * 500) / 500, np.arange(minutes * 60 * 125) / 125
    ecg = np.sin(2 * np.pi * 1.2 * t_ecg) + 0.05 * rng.standard_normal(t_ecg.size)
    ppg = 50 + 10 * np.sin(2 * np.pi * 1.2 * t_ppg + 0.3) + rng.standard_normal(t_ppg.size)
    path = tmp_path / "bedside.edf"
    highlevel.write_edf(str(path), [ecg, ppg], [
        highlevel.make_signal_header("ECG II", dimension="mV", sample_frequency=500, physical_min=-3, physical_max=3),
        highlevel.make_signal_header("Pleth", dimension="", sample_frequency=125, physical_min=0, physical_max=100)],
        file_type=pyedflib.FILETYPE_EDFPLUS)
    recording = read_recording(path)
    assert recording.fs == [500.0, 125.0] and all(isinstance(lead, EdfLead) for lead in recording.signal)
    reads = []
    original = EdfLead.__getitem__
    monkeypatch.setattr(EdfLead, "__getitem__", lambda self, key: reads.append(key) or original(self, key))
    with Session.open(tiny_artifacts["fp32"], provider="cpu") as session:
        segmented = session.embed(recording.signal, recording.fs, recording.leads, hop_s=60)
        longest = max((k.stop - k.start) / lead_rate for k, lead_rate in zip(reads, [500.0, 125.0] * len(reads)))
        assert longest < 15 * 60  # no read of a whole lead: ten minutes plus a minute of context each side
        monkeypatch.setattr(session_module, "rates_segment_plan", lambda *args: None)
        whole = session.embed([np.asarray(x) for x in recording.signal], recording.fs, recording.leads, hop_s=60)
    assert segmented.flags == whole.flags and np.array_equal(segmented.start_s, whole.start_s)
    inner = np.abs(segmented.features - whole.features)[1:-1].max()  # the end windows: resampling wraps the ends
    assert inner < 1e-4, inner


# --- misleading cases: the message names the real cause --------------------------------------------------------

def test_a_checkpoint_is_never_ignored_and_torch_advice_never_repeated(tiny_artifacts, tmp_path, data_dir, capsys):
    import fractions

    import torch

    garbage = tmp_path / "garbage.pth"
    torch.save({"weights": fractions.Fraction(1, 2)}, garbage)  # pickled objects, not a state dict
    err = _refused(["verify", str(tiny_artifacts["fp32"]), "--checkpoint", str(garbage)], capsys)
    assert "UNTRAINED weights (seed 0), not garbage.pth" in err  # was: PASS, the checkpoint never read
    err = _refused(["run", str(garbage), str(data_dir / "E07500.npz")], capsys)
    assert "does not unpickle" in err and "weights_only" not in err


def test_files_that_are_no_artifact_or_recording_say_what_they_are(tiny_artifacts, tmp_path, data_dir, capsys):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    assert "is a folder, not an exported file" in _refused(["info", str(folder)], capsys)
    renamed = tmp_path / "model.bin"
    shutil.copyfile(tiny_artifacts["fp32"], renamed)
    assert "name it model.onnx" in _refused(["info", str(renamed)], capsys)

    records = _folder(tmp_path, data_dir, names=("E07500",))
    (records / "dangling.npz").symlink_to(records / "gone.npz")
    (records / "loop.npz").symlink_to(records / "loop.npz")
    os.mkfifo(records / "fifo.npz")
    out = tmp_path / "t.parquet"
    assert main(["run", str(tiny_artifacts["fp32"]), str(records), "--out", str(out), "--provider", "cpu"]) == 2
    errors = {Path(e["path"]).name: e["error"] for e in json.loads((tmp_path / "t.errors.json").read_text())}
    assert "broken symlink or a symlink loop" in errors["dangling.npz"]
    assert "broken symlink or a symlink loop" in errors["loop.npz"]
    assert "not a regular file" in errors["fifo.npz"]
    assert pq.read_table(out).num_rows == 1
    capsys.readouterr()
    assert "symlink loop" in _refused(["run", str(tiny_artifacts["fp32"]), str(records / "loop.npz")], capsys)


def test_recording_rates_and_edf_records_are_never_silently_replaced(tmp_path, data_dir):
    pytest.importorskip("pyedflib", reason="EDF needs the edf extra")
    from pyedflib import highlevel

    from csfm_edge.errors import InputFileError
    from csfm_edge.recordings.readers import read_recording

    with pytest.raises(InputFileError, match=r"records its rate \(500 Hz\); --fs 250 disagrees"):
        read_recording(data_dir / "E07500.npz", fs=250)
    assert read_recording(data_dir / "E07500.npz", fs=500).fs == 500  # the same rate is no contradiction

    t = np.arange(30 * 250) / 250
    path = tmp_path / "ecg.edf"
    highlevel.write_edf(str(path), [np.sin(2 * np.pi * 1.2 * t)], [highlevel.make_signal_header(
        "ECG II", dimension="mV", sample_frequency=250, physical_min=-2, physical_max=2)])
    assert read_recording(path).signal.shape == (1, 30 * 250)
    with pytest.raises(InputFileError, match="records its rate"):
        read_recording(path, fs=500)
    data = path.read_bytes()
    header = 256 * (int(data[252:256]) + 1)
    record = (len(data) - header) // int(data[236:244])
    path.write_bytes(data + data[-record:] * 5)  # five more data records than the header counts
    with pytest.raises(InputFileError, match="header counts 30 data records but the file holds 35"):
        read_recording(path)


def test_a_spike_in_one_lead_of_a_stream_scores_the_others(tiny_artifacts):
    t = np.arange(15 * 250) / 250
    x = np.stack([np.sin(2 * np.pi * 1.2 * t), 50 + np.cos(2 * np.pi * 1.2 * t)])
    x[0, 2600] = 1e12  # one impossible sample in II at 10.4 s
    with Session.open(tiny_artifacts["fp32"], provider="cpu") as session:
        results = session.stream(250, ["II", "PPG"], window_s=10, hop_s=1).push(x)
        ppg_only = session.embed(x[1:, 2 * 250: 12 * 250], 250, ["PPG"]).features[0]
    assert [r.flags for r in results] == [[]] + [["implausible:II"]] * 5  # codes, never a sentence
    assert all(r.features is not None for r in results)  # scored on PPG, not no_signal
    np.testing.assert_allclose(results[2].features, ppg_only, atol=1e-5)


def test_csv_exports_with_quotes_or_no_rows(tmp_path):
    from csfm_edge.errors import InputFileError
    from csfm_edge.recordings.readers import read_recording

    quoted = tmp_path / "quoted.csv"
    quoted.write_text('"II","PPG"\n' + "".join(f'"{np.sin(i / 40):.4f}","{50 + np.cos(i / 40):.4f}"\n'
                                               for i in range(2500)))
    recording = read_recording(quoted, fs=250)
    assert recording.leads == ["II", "PPG"] and recording.signal.shape == (2, 2500)
    header_only = tmp_path / "header.csv"
    header_only.write_text("II,PPG\n")
    with pytest.raises(InputFileError, match="has a header but no rows of samples"):
        read_recording(header_only, fs=250)


def test_export_calibration_problems_name_their_cause(tmp_path, data_dir, capsys):
    from csfm_edge.export.onnx_export import ExportRequest, _calibration_reader

    base = ["export", "--size", "tiny", "--precision", "int8", "--out", str(tmp_path / "out")]
    for count in ("0", "-1"):
        assert f"--calibration-windows must be a whole number > 0, got {count}" in _refused(
            [*base, "--calibration-windows", count], capsys)
    assert "is a file: name the folder" in _refused([*base, "--calibration-data", str(data_dir / "E07500.npz")],
                                                     capsys)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copyfile(data_dir / "E07500.npz", one / "E07500.npz")  # 10 s: it goes whole to verification
    assert main([*base, "--calibration-data", str(one)]) == 1  # after the progress line of loading the model
    err = capsys.readouterr().err
    assert "no calibration windows in" in err.splitlines()[-1] and "Traceback" not in err

    with np.load(data_dir / "a103l.npz") as record:
        labels = [str(n) for n in record["leads"]]
        pleth = record["signal"][labels.index("PLETH")]
        fs = float(record["fs"])
    ppg_only = tmp_path / "ppg"
    ppg_only.mkdir()
    np.savez(ppg_only / "pleth.npz", signal=pleth[None, : int(120 * fs)], fs=fs, leads=np.array(["PLETH"]))
    said: list[str] = []
    reader = _calibration_reader(ExportRequest(size="tiny", out_dir=tmp_path, calibration_data=ppg_only,
                                               calibration_windows=2, progress=said.append))
    assert len(reader) == 2 and len(said) == 1 and "hold no I, II, III" in said[0] and "PPG" not in said[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
