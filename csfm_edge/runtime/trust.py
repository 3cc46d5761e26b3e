"""Signed artifacts: an OpenSSF model-signing signature beside each artifact, checked before it opens.

A manifest's sha256 proves an artifact survived copying; it proves nothing against a file replaced
together with a rewritten manifest. A signature does: ``csfm-edge sign`` writes ``NAME.sig`` beside
``NAME`` (an ``.onnx`` graph or a TensorRT ``.plan``), a Sigstore bundle (model-signing 1.x,
offline: a local EC key, or a key with its X.509 certificate) over the SHA-256 of the artifact and of
its sidecar manifest where there is one. With a trust anchor (``--trust PUBLIC.pem`` or a CA
certificate, ``$CSFM_EDGE_TRUST``, ``Session.open(..., trust=...)``) an artifact opens only if that
signature verifies; unsigned, changed or signed by another key is one :class:`TrustError` naming which.

``model_signing`` (the ``sign`` extra) is imported only when signing or checking.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from csfm_edge.errors import TrustError

SIGNATURE_SUFFIX = ".sig"
TRUST_ENV = "CSFM_EDGE_TRUST"  # a deployment's trust anchor when no --trust / trust= is given


def signature_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.sig`` (an ONNX graph and a plan of the same stem keep separate ones)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SIGNATURE_SUFFIX)


def signed_files(artifact: str | Path) -> list[Path]:
    """What a signature covers: the artifact, and its sidecar manifest where there is one."""
    from csfm_edge.runtime.manifest import manifest_path

    artifact = Path(artifact)
    sidecar = manifest_path(artifact)
    return [artifact] + ([sidecar] if sidecar.is_file() and sidecar != artifact else [])


def resolve_trust(trust: str | Path | None) -> Path | None:
    """The trust anchor to use: ``trust`` where given, else ``$CSFM_EDGE_TRUST``, else None (no check)."""
    if trust is None or str(trust) == "":
        trust = os.environ.get(TRUST_ENV) or None
    return Path(trust) if trust is not None else None


def _hashing(files: Sequence[Path]):
    """model-signing's SHA-256 file hashing, restricted to ``files`` (an artifact shares its folder with others)."""
    from model_signing import hashing

    class _Files(hashing.Config):
        def hash(self, model_path, *, files_to_hash=None):  # noqa: ARG002 (always exactly these files)
            return super().hash(model_path, files_to_hash=list(files))

    return _Files()


@dataclass(frozen=True)
class SigningKey:
    """A PEM EC private key (P-256/384/521), optionally with its X.509 certificate and the chain up to a CA."""

    key: Path
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()
    password: str | None = None


def signing_config(key: SigningKey, files: Sequence[Path] = ()):
    """model-signing's signing configuration for ``key`` over ``files``; a :class:`TrustError` where the key (or
    certificate) cannot sign. Called before long work (export) so a bad key fails first."""
    from model_signing import signing

    _check_readable(key.key, "signing key")
    for path in ([key.certificate] if key.certificate else []) + list(key.chain):
        _check_readable(path, "certificate")
    config = signing.Config().set_hashing_config(_hashing(files))
    try:
        if key.certificate is None:
            return config.use_elliptic_key_signer(private_key=key.key, password=key.password)
        # model-signing 1.1 cannot load an empty chain: a certificate issued by the CA itself repeats itself there
        return config.use_certificate_signer(private_key=key.key, signing_certificate=key.certificate,
                                             certificate_chain=list(key.chain) or [key.certificate])
    # not a PEM key, an encrypted one without password; an RSA key: model-signing 1.1 asks it for an EC curve
    except (ValueError, TypeError, AttributeError) as exc:
        raise TrustError(f"{key.key} cannot sign: {_key_problem(exc)} (an EC P-256/384/521 private key in PEM, e.g. "
                         "openssl ecparam -name prime256v1 -genkey -noout -out key.pem)") from None


def sign_artifacts(artifacts: Sequence[str | Path], key: SigningKey, *, force: bool = False) -> list[Path]:
    """Sign each artifact (and its sidecar) with ``key``; return the signatures' paths.

    Every artifact must first read as what its manifest says (an artifact that fails its own checks is not
    signed), the key must load, and each signature must be new (or ``force``: a release signature replaced by
    a slip of the wrong key is lost) in a writable folder, before any signature is written. Each signature is
    written atomically."""
    from csfm_edge.fileio import check_output, write_atomically
    from csfm_edge.runtime.manifest import manifest_path, read_manifest

    paths = [Path(a) for a in artifacts]
    for artifact in paths:
        read_manifest(artifact)
    signing_config(key)
    for artifact in paths:
        check_output(signature_path(artifact), protected=[artifact, manifest_path(artifact)], force=force,
                     flag="signature")
    written = []
    for artifact in paths:
        target = signature_path(artifact)
        staging = target.with_name(f".{target.name}.{os.getpid()}.staging")
        try:
            signing_config(key, signed_files(artifact)).sign(artifact.parent, staging)
            write_atomically(target, staging.read_bytes())
        except OSError as exc:
            raise TrustError(f"cannot write {target} ({exc.strerror or exc})") from None
        finally:
            staging.unlink(missing_ok=True)
        written.append(target)
    return written


def verify_artifact(artifact: str | Path, trust: str | Path | None) -> Path | None:
    """Refuse ``artifact`` unless its signature verifies with ``trust`` (a PEM public key, or a CA certificate for
    certificate signatures); None checks ``$CSFM_EDGE_TRUST``, and without either nothing is checked. Return the
    trust anchor used (None: unchecked)."""
    anchor = resolve_trust(trust)
    if anchor is None:
        return None
    artifact = Path(artifact)
    _check_readable(anchor, "--trust")
    signature = signature_path(artifact)
    if not artifact.is_file():
        return anchor  # the opener says what is wrong with the artifact itself
    if not signature.is_file():
        raise TrustError(f"{artifact.name} is unsigned (no {signature.name} beside it) and --trust {anchor.name} is "
                         "set: refusing to open it")
    files = signed_files(artifact)
    kinds = {"key": "an EC public key", "certificate": "a CA certificate"}
    signed_with, trusted = _signed_with(signature), ("certificate" if b"BEGIN CERTIFICATE" in anchor.read_bytes()
                                                     else "key")
    if signed_with in kinds and signed_with != trusted:
        raise TrustError(f"{artifact.name} is signed by another key than --trust {anchor.name} (its signature is a "
                         f"{signed_with} signature: trust {kinds[signed_with]}): refusing to open it")
    config = _verifier(anchor).set_hashing_config(_hashing(files))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # model-signing prints format warnings to stdout
            config.verify(artifact.parent, signature)
    except Exception as exc:  # model-signing raises ValueError, cryptography's InvalidSignature, parse errors
        raise TrustError(_refusal(artifact, files, signature, anchor, exc)) from None
    return anchor


def _signed_with(signature: Path) -> str | None:
    """``key`` or ``certificate``: how a model-signing bundle says it was signed (None: unreadable, said later)."""
    try:
        material = json.loads(signature.read_text()).get("verificationMaterial") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return "certificate" if "x509CertificateChain" in material else "key" if "publicKey" in material else None


def _verifier(anchor: Path):
    from model_signing import verifying

    text = anchor.read_bytes()
    try:
        if b"BEGIN CERTIFICATE" in text:
            return verifying.Config().use_certificate_verifier(certificate_chain=[anchor])
        return verifying.Config().use_elliptic_key_verifier(public_key=anchor)
    except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: an RSA key (no EC curve)
        raise TrustError(f"--trust {anchor} is not a PEM EC public key or CA certificate "
                         f"({_key_problem(exc)})") from None


def _refusal(artifact: Path, files: Sequence[Path], signature: Path, anchor: Path, exc: Exception) -> str:
    """One line saying which: changed since signing, another key, not covering this file, or a broken signature."""
    message = _first_line(exc)
    changed = [f.name for f in files if re.search(r"Hash mismatch for \W*" + re.escape(f.name), message)]
    if changed:
        which = " and ".join(changed) if changed != [artifact.name] else artifact.name
        return (f"{which} changed since it was signed ({signature.name} does not match): tampered or corrupt; "
                "refusing to open it")
    if "Missing files" in message or "Extra files" in message:
        return (f"{signature.name} signs other files than {artifact.name} and its manifest (renamed, or copied "
                "from another artifact?): refusing to open it")
    if "Key mismatch" in message or type(exc).__name__ == "InvalidSignature" or "certificate verify" in message \
            or "unable to get" in message:
        return f"{artifact.name} is signed by another key than --trust {anchor.name}: refusing to open it"
    return f"{signature.name} is not a valid signature of {artifact.name} ({message}): refusing to open it"


def _check_readable(path: Path, what: str) -> None:
    if not path.is_file():
        raise TrustError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TrustError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None


def _key_problem(exc: Exception) -> str:
    """Why a key did not load; model-signing 1.1 fails on a key of another type (RSA ...) asking for its curve."""
    return "not an elliptic-curve key" if isinstance(exc, AttributeError) else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
