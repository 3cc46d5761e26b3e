"""The PyTorch reference against the authors' outputs, the spec's table and its stated properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csfm_edge.config import SIZES, CSFMConfig
from csfm_edge.errors import CheckpointError, CsfmError, WindowLengthError
from csfm_edge.model import CSFM, build, load_checkpoint

CASES = ("lead2_ppg", "twelve_lead", "ppg_v5_unsorted")
# The spec's table: parameters of the signal path, and with the unused text branch + Linear(dim, 1) head.
SPEC_PARAMS = {"tiny": (19_018_802, 42_511_923), "base": (85_137_458, 108_630_579),
               "large": (235_192_370, 266_516_531)}
SPEC_KEYS = {"tiny": 84, "base": 150, "large": 194}
TEXT_VOCAB, TEXT_LEN = 30522, 64


def spec_shapes(dim: int, depth: int, inner: int, mlp: int) -> dict[str, tuple[int, ...]]:
    """The signal path's keys and shapes as the spec lists them (Tiny's pattern, any widths)."""
    shapes = {"cls_token": (1, 1, dim), "ts_channel_type_embedding": (1, 13, dim),
              "ts_pos_embedding": (1, 100, dim), "ts_to_patch_embedding.1.weight": (25,),
              "ts_to_patch_embedding.1.bias": (25,), "ts_to_patch_embedding.2.weight": (dim, 25),
              "ts_to_patch_embedding.2.bias": (dim,), "ts_to_patch_embedding.3.weight": (dim,),
              "ts_to_patch_embedding.3.bias": (dim,), "transformer.norm.weight": (dim,),
              "transformer.norm.bias": (dim,)}
    for i in range(depth):
        p = f"transformer.layers.{i}"
        shapes.update({f"{p}.0.norm.weight": (dim,), f"{p}.0.norm.bias": (dim,),
                       f"{p}.0.to_qkv.weight": (3 * inner, dim), f"{p}.0.to_out.0.weight": (dim, inner),
                       f"{p}.0.to_out.0.bias": (dim,), f"{p}.1.net.0.weight": (dim,),
                       f"{p}.1.net.0.bias": (dim,), f"{p}.1.net.1.weight": (mlp, dim),
                       f"{p}.1.net.1.bias": (mlp,), f"{p}.1.net.4.weight": (dim, mlp),
                       f"{p}.1.net.4.bias": (dim,)})
    return shapes


def text_branch(dim: int, vocab: int = TEXT_VOCAB) -> dict[str, torch.Tensor]:
    return {"text_type_embedding": torch.randn(1, 1, dim), "text_pos_embedding": torch.randn(1, TEXT_LEN, dim),
            "text_to_embedding.0.weight": torch.randn(vocab, dim), "text_to_embedding.1.weight": torch.ones(dim),
            "text_to_embedding.1.bias": torch.zeros(dim)}


def run(model: CSFM, signal: np.ndarray, ids) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.as_tensor(signal), torch.as_tensor(ids, dtype=torch.int64)).numpy()


@pytest.fixture(scope="module")
def micro(reference_dir):
    return load_checkpoint(reference_dir / "csfm_micro.pth")


@pytest.fixture(scope="module")
def tiny():
    return build("tiny", seed=0)


@pytest.mark.parametrize("case", CASES)
def test_authors_outputs_reproduced(micro, reference_dir, case):
    outputs = np.load(reference_dir / "csfm_micro_outputs.npz")
    features = run(micro, outputs[f"{case}__signal"], outputs[f"{case}__channel_ids"])
    logits = micro.head(torch.from_numpy(features)).detach().numpy()
    assert np.abs(features - outputs[f"{case}__features"]).max() <= 1e-5
    assert np.abs(logits - outputs[f"{case}__logits"]).max() <= 1e-5


def test_micro_checkpoint_report(micro):
    report = micro.load_report
    assert report.size is None  # a custom architecture: loads, but is named no released size
    assert (micro.config.dim, micro.config.depth, micro.config.heads, micro.config.mlp_dim) == (64, 2, 2, 96)
    assert micro.config.head_classes == 3
    assert "text_to_embedding.0.weight" in report.ignored
    assert len(report.loaded) == 35


@pytest.mark.parametrize("size", SIZES)
def test_sizes_match_the_spec_table(size):
    config = SIZES[size]
    with torch.device("meta"):
        model = CSFM(config.with_head(1))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = spec_shapes(config.dim, config.depth, config.inner_dim, config.mlp_dim)
    expected.update({"mlp_head.weight": (1, config.dim), "mlp_head.bias": (1,)})
    assert shapes == expected
    signal_path = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mlp_head"))
    text = config.dim * (TEXT_VOCAB + 2 + TEXT_LEN + 1)  # embedding, its LayerNorm, positions, type row
    assert signal_path == SPEC_PARAMS[size][0] == config.signal_path_parameters()
    assert signal_path + text + config.dim + 1 == SPEC_PARAMS[size][1]
    assert len(shapes) + len(text_branch(1)) == SPEC_KEYS[size]


def authors_layout(model: CSFM, head: torch.nn.Linear | None = None) -> dict[str, torch.Tensor]:
    """A checkpoint as the authors write one: encoder. prefix, text branch, decoder keys, a head."""
    state = {f"encoder.{k}": v.clone() for k, v in model.state_dict().items()}
    state.update({f"encoder.{k}": v for k, v in text_branch(model.config.dim, vocab=16).items()})
    state.update({"encoder.dense_scratch.weight": torch.randn(8, 8),
                  "encoder.act_1_postprocess.0.weight": torch.randn(4),
                  "encoder.dense_head.bias": torch.randn(2), "decoder.proj.weight": torch.randn(3, 3)})
    if head is not None:
        state["encoder.mlp_head.weight"] = head.weight.detach().clone()
        state["encoder.mlp_head.bias"] = head.bias.detach().clone()
    return state


def test_authors_layout_loads_bit_equal(tiny, tmp_path):
    head = torch.nn.Linear(768, 5)
    path = tmp_path / "finetuned.pth"
    torch.save(authors_layout(tiny, head), path)
    loaded = load_checkpoint(path, size="tiny")
    assert loaded.load_report.size == "tiny" and loaded.config.head_classes == 5
    assert {"encoder.dense_scratch.weight", "dense_head.bias"} & set(loaded.load_report.ignored)
    signal = torch.randn(2, 2, 2500).numpy()
    assert np.array_equal(run(loaded, signal, [1, 12]), run(tiny, signal, [1, 12]))
    assert torch.equal(loaded.head.weight, head.weight)


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict"])
def test_bare_and_nested_state_dicts(tiny, tmp_path, wrap):
    state = tiny.state_dict()
    obj = state if wrap == "bare" else {wrap: state, "epoch": 3}
    torch.save(obj, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded.load_report.size == "tiny" and loaded.head is None
    signal = torch.randn(1, 1, 2500).numpy()
    assert np.array_equal(run(loaded, signal, [1]), run(tiny, signal, [1]))


def test_wrong_size_is_refused(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match="tiny checkpoint, not base"):
        load_checkpoint(tmp_path / "tiny.pt", size="base")
    with pytest.raises(CsfmError, match="unknown CSFM size"):
        load_checkpoint(tmp_path / "tiny.pt", size="huge")


def test_missing_and_misshapen_keys_are_named(micro, tmp_path):
    state = micro.state_dict()
    del state["transformer.layers.1.1.net.4.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"transformer\.layers\.1\.1\.net\.4\.bias"):
        load_checkpoint(tmp_path / "missing.pt")
    state = micro.state_dict()
    state["ts_pos_embedding"] = torch.zeros(1, 99, 64)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="ts_pos_embedding"):
        load_checkpoint(tmp_path / "bad.pt")
    state = micro.state_dict()
    state["transformer.layers.0.0.to_out.0.weight"] = torch.zeros(64, 100)
    torch.save(state, tmp_path / "heads.pt")
    with pytest.raises(CheckpointError, match="head width"):
        load_checkpoint(tmp_path / "heads.pt")


def test_non_checkpoints_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "notes.txt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_checkpoint(tmp_path / "empty.pt")
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="cls_token"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_batch_independence(micro):
    signal = np.random.default_rng(1).standard_normal((4, 2, 2500)).astype(np.float32)
    together = run(micro, signal, [1, 12])
    alone = np.concatenate([run(micro, signal[i: i + 1], [1, 12]) for i in range(4)])
    assert np.abs(together - alone).max() <= 1e-5


def test_permutation_invariance(micro):
    rng = np.random.default_rng(2)
    signal = rng.standard_normal((2, 12, 2500)).astype(np.float32)
    ids = np.arange(12)
    order = rng.permutation(12)
    assert np.abs(run(micro, signal, ids) - run(micro, signal[:, order], ids[order])).max() <= 1e-5


def test_window_lengths(micro):
    signal = np.random.default_rng(3).standard_normal((1, 2, 2600)).astype(np.float32)
    assert run(micro, signal[..., :1250], [1, 12]).shape == (1, 64)
    for samples in (2510, 2600, 1260, 0):
        with pytest.raises(WindowLengthError, match="multiples of 25 from 25 to 2500"):
            run(micro, signal[..., :samples], [1, 12])


def test_build_is_seeded_and_labelled():
    a, b = build("tiny", seed=7), build("tiny", seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.provenance == "untrained, seed 7"
    custom = build(CSFMConfig(dim=64, depth=1, heads=1, mlp_dim=32, head_classes=2), seed=1)
    assert custom.head.out_features == 2
