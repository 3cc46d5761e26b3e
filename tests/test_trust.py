"""Signed artifacts and --trust: real EC keys and X.509 certificates made here, real model-signing signatures,
real exported graphs. A signed artifact opens; a flipped byte, another key, or no signature is one line."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("model_signing", reason="signing needs the sign extra (model-signing, pyopenssl)")

from cryptography import x509  # noqa: E402 (model-signing brings cryptography)
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from csfm_edge.cli import main  # noqa: E402
from csfm_edge.errors import TrustError  # noqa: E402
from csfm_edge.recordings.sample import sample_ecg  # noqa: E402
from csfm_edge.runtime.session import Session  # noqa: E402
from csfm_edge.runtime.trust import (  # noqa: E402
    TRUST_ENV,
    SigningKey,
    sign_artifacts,
    signature_path,
    signing_config,
)


def _write_key(folder: Path, name: str) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public, key


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True))
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    paths = {}
    for name in ("release", "other"):
        paths[name], paths[f"{name}.pub"], _ = _write_key(folder, name)
    return paths


@pytest.fixture()
def signed(tiny_artifacts, tmp_path, keys) -> Path:
    """A copy of the Tiny fp32 artifact (graph + sidecar) signed with the release key."""
    source = tiny_artifacts["fp32"]
    for path in (source, source.with_suffix(".json")):
        shutil.copyfile(path, tmp_path / path.name)
    artifact = tmp_path / source.name
    assert main(["sign", str(artifact), "--key", str(keys["release"])]) == 0
    assert signature_path(artifact).is_file()
    return artifact


def _refused(argv: list[str], capsys) -> str:
    """The command's exit status is 1 and its error one line, never a traceback; return that line."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_signed_artifact_opens_and_every_refusal_is_one_line(signed, keys, capsys, monkeypatch):
    trust = keys["release.pub"]
    with Session.open(signed, provider="cpu", trust=trust) as session:
        assert session.info()["size"] == "tiny"
    assert main(["info", str(signed), "--trust", str(trust)]) == 0
    assert "signature   verified with" in capsys.readouterr().out

    assert "signed by another key" in _refused(["info", str(signed), "--trust", str(keys["other.pub"])], capsys)
    with pytest.raises(TrustError, match="signed by another key"):
        Session.open(signed, trust=keys["other.pub"])
    monkeypatch.setenv(TRUST_ENV, str(keys["other.pub"]))  # a deployment's policy, without any flag
    with pytest.raises(TrustError, match="signed by another key"):
        Session.open(signed)
    monkeypatch.delenv(TRUST_ENV)

    sidecar = signed.with_suffix(".json")
    original = sidecar.read_bytes()
    sidecar.write_bytes(original.replace(b'"tiny"', b'"base"', 1))  # a rewritten manifest
    assert "csfm-tiny.fp32.json changed since it was signed" in _refused(
        ["info", str(signed), "--trust", str(trust)], capsys)
    sidecar.write_bytes(original)

    data = bytearray(signed.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the weights
    signed.write_bytes(bytes(data))
    err = _refused(["info", str(signed), "--trust", str(trust)], capsys)
    assert "csfm-tiny.fp32.onnx changed since it was signed" in err and "tampered" in err

    unsigned = signed.with_name("copy.onnx")
    shutil.copyfile(signed, unsigned)
    assert "copy.onnx is unsigned (no copy.onnx.sig" in _refused(
        ["info", str(unsigned), "--trust", str(trust)], capsys)
    assert main(["info", str(unsigned)]) == 1  # without --trust: refused for its hash as ever, not for signing
    assert "unsigned" not in capsys.readouterr().err

    shutil.copyfile(signature_path(signed), signature_path(unsigned))  # another artifact's signature
    assert "signs other files than copy.onnx" in _refused(["info", str(unsigned), "--trust", str(trust)], capsys)
    signature_path(unsigned).write_text("{not a signature")
    assert "not a valid signature" in _refused(["info", str(unsigned), "--trust", str(trust)], capsys)
    assert "is not a PEM EC public key" in _refused(["info", str(signed), "--trust", str(sidecar)], capsys)
    assert "does not exist" in _refused(["info", str(signed), "--trust", str(signed.parent / "no.pem")], capsys)


def test_without_trust_unsigned_artifacts_run_as_before(tiny_artifacts, tmp_path, capsys):
    assert not signature_path(tiny_artifacts["fp32"]).exists()
    with Session.open(tiny_artifacts["fp32"], provider="cpu") as session:
        assert session.info()["precision"] == "fp32"


def test_signing_refuses_bad_keys_and_broken_artifacts_before_writing(tiny_artifacts, tmp_path, keys, capsys):
    assert "cannot sign" in _refused(["sign", str(tiny_artifacts["fp32"]), "--key", str(keys["release.pub"])],
                                     capsys)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model")
    assert _refused(["sign", str(garbage), "--key", str(keys["release"])], capsys)
    assert not signature_path(garbage).exists()
    rsa_like = tmp_path / "empty.pem"
    rsa_like.write_text("")
    with pytest.raises(TrustError, match="cannot sign"):
        sign_artifacts([tiny_artifacts["fp32"]], SigningKey(rsa_like))
    # export checks the key before any model is loaded or traced
    err = _refused(["export", "--size", "tiny", "--precision", "fp32", "--out", str(tmp_path / "out"),
                    "--sign-key", str(keys["release.pub"])], capsys)
    assert "cannot sign" in err and not list((tmp_path / "out").glob("*.onnx"))


def test_certificate_signatures_verify_against_their_ca(signed, tmp_path, keys, capsys):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("csfm-edge test CA", ca_key, "csfm-edge test CA", ca_key, ca=True)
    leaf_private, _, leaf_key = _write_key(tmp_path, "leaf")
    leaf = _certificate("release signer", leaf_key, "csfm-edge test CA", ca_key, ca=False)
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    assert "signature" in _refused(["sign", str(signed), "--key", str(leaf_private), "--certificate",
                                    str(tmp_path / "leaf.crt")], capsys)  # signed already: kept without --force
    assert main(["sign", str(signed), "--key", str(leaf_private), "--certificate", str(tmp_path / "leaf.crt"),
                 "--force"]) == 0
    Session.open(signed, provider="cpu", trust=tmp_path / "ca.crt").close()

    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _certificate("another CA", other_key, "another CA", other_key, ca=True)
    (tmp_path / "other-ca.crt").write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(TrustError, match="signed by another key"):
        Session.open(signed, trust=tmp_path / "other-ca.crt")
    with pytest.raises(TrustError, match="signed by another key"):  # a certificate signature, a bare key trusted
        Session.open(signed, trust=keys["release.pub"])


def test_every_command_that_opens_an_artifact_honours_trust(signed, tmp_path, keys, capsys):
    """run (one file and a batch), verify, bench and serve refuse an unsigned artifact before any work."""
    unsigned = tmp_path / "unsigned" / signed.name
    unsigned.parent.mkdir()
    shutil.copyfile(signed, unsigned)
    shutil.copyfile(signed.with_suffix(".json"), unsigned.with_suffix(".json"))
    trust = str(keys["release.pub"])
    record = tmp_path / "rec.npy"
    np.save(record, sample_ecg().signal[:, :20_000])
    for argv in (["run", str(unsigned), str(record), "--fs", "1000", "--leads", "II"],
                 ["run", str(unsigned), str(record), str(record), "--fs", "1000", "--leads", "II"],
                 ["verify", str(unsigned)],
                 ["bench", str(unsigned), "--batch", "1", "--lead-sets", "ii", "--duration-s", "0.1"],
                 ["serve", str(unsigned)]):
        assert "is unsigned" in _refused([*argv, "--trust", trust], capsys), argv
    assert main(["run", str(signed), str(record), "--fs", "1000", "--leads", "II", "--trust", trust]) == 0
    assert "windows in" in capsys.readouterr().out


def test_triton_repository_carries_the_signature_and_its_model_checks_it(signed, tmp_path, keys, capsys):
    from csfm_edge.serving.bundled_server import BundledServer, RepositoryServeRequest, repository_artifacts

    trust = keys["release.pub"]
    repo = tmp_path / "repo"
    assert "signed by another key" in _refused(
        ["triton-repo", str(signed), "--out", str(repo), "--platform", "python", "--lead-sets", "ii",
         "--trust", str(keys["other.pub"])], capsys)
    assert not repo.exists() or not any(repo.iterdir())
    assert main(["triton-repo", str(signed), "--out", str(repo), "--platform", "python", "--lead-sets", "ii",
                 "--trust", str(trust)]) == 0
    [artifact] = repository_artifacts(repo)
    assert artifact.name == signed.name and signature_path(artifact).is_file()
    config = (artifact.parents[1] / "config.pbtxt").read_text()
    assert f'key: "trust" value: {{ string_value: "{trust.resolve()}" }}' in config
    Session.open(artifact, provider="cpu", trust=trust).close()  # what the Python-backend model does at load

    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0x01
    artifact.write_bytes(bytes(data))  # the repository's copy replaced after it was written
    with pytest.raises(TrustError, match="changed since it was signed"):
        BundledServer(RepositoryServeRequest(repo, trust=trust))  # refused before any server starts
    assert "changed since it was signed" in _refused(
        ["serve", "--repository", str(repo), "--trust", str(trust)], capsys)


def test_signature_file_is_a_sigstore_bundle(signed):
    bundle = json.loads(signature_path(signed).read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert "dsseEnvelope" in bundle and bundle["verificationMaterial"]["publicKey"]["hint"]


TRITON_PYTHON = Path(__file__).resolve().parents[1] / ".venv-triton" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not TRITON_PYTHON.exists(), reason="no .venv-triton (the bundled tritonserver comes with "
                                                      "nvidia-pytriton, numpy < 2; scripts/test creates it)")
def test_python_backend_model_checks_the_signature_at_load(signed, keys, tmp_path):
    """In the real bundled tritonserver: the Python-backend model of a repository written with --trust refuses a
    copy changed after the repository was written (even when serve itself is not given --trust), and loads the
    signed one."""
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    from csfm_edge.serving.bundled_server import repository_artifacts
    from csfm_edge.serving.triton_repo import TritonRepoRequest, write_repository

    root = Path(__file__).resolve().parents[1]
    stub_imports = subprocess.run([str(TRITON_PYTHON), "-c", "import csfm_edge; print(csfm_edge.__file__)"],
                                  capture_output=True, text=True, cwd="/", env={}).stdout.strip()
    if not stub_imports.startswith(str(root)):  # the backend stub's embedded Python ignores PYTHONPATH
        pytest.skip(f".venv-triton's csfm-edge is another checkout's ({stub_imports or 'none'}): its Python backend "
                    "would run that code")
    repo = tmp_path / "repo"
    request = TritonRepoRequest([signed], repo, ["ii"], platform="python", provider="cpu", trust=keys["release.pub"])
    write_repository(request)
    [artifact] = repository_artifacts(repo)
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0x01
    artifact.write_bytes(bytes(data))
    env = {**os.environ, "PYTHONPATH": str(root)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(TRITON_PYTHON), "-m", "csfm_edge", "serve", "--repository", str(repo), "--port", str(port)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert refused.returncode != 0
    assert "changed since it was signed" in refused.stdout + refused.stderr, (refused.stdout + refused.stderr)[-3000:]

    request.force = True
    write_repository(request)  # the signed artifact again
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/csfm-tiny-fp32-ii/ready",
                                            timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(1)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(90)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)


def test_rsa_keys_are_refused_in_one_line(tmp_path, capsys):
    """An RSA key pair (openssl genrsa), the most common key a user has at hand: model-signing 1.1 fails on it
    with an AttributeError; signing, exporting and --trust each say it is not an EC key, before any work."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = tmp_path / "rsa.pem", tmp_path / "rsa.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(TrustError, match="rsa.pem cannot sign: not an elliptic-curve key"):
        signing_config(SigningKey(private))
    err = _refused(["export", "--size", "tiny", "--precision", "fp32", "--out", str(tmp_path / "out"),
                    "--sign-key", str(private)], capsys)
    assert "not an elliptic-curve key" in err and not list((tmp_path / "out").glob("*.onnx"))
    artifact = tmp_path / "model.onnx"  # the anchor is read before the artifact: no export needed
    artifact.write_bytes(b"\x08\x07not a model")
    signature_path(artifact).write_text("{}")
    err = _refused(["info", str(artifact), "--trust", str(public)], capsys)
    assert "is not a PEM EC public key or CA certificate (not an elliptic-curve key)" in err
