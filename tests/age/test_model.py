"""The age model (r3d_18 with a 1 -> 3 channel adapter), local pretrained weights, and predict()."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models.video import r3d_18

from ageatlas.age.model import build_model, load_trained
from ageatlas.age.predict import predict


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Building the model must never reach the network."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_authors_architecture_and_output_shape():
    torch.manual_seed(0)
    model = build_model(hidden=64)
    assert isinstance(model.adapter, torch.nn.Conv3d)
    assert (model.adapter.in_channels, model.adapter.out_channels, model.adapter.kernel_size) == (
        1,
        3,
        (1, 1, 1),
    )
    first, second = model.backbone.fc
    assert (first.in_features, first.out_features, second.in_features, second.out_features) == (
        512,
        64,
        64,
        1,
    )
    assert len(model.backbone.fc) == 2  # no activation between the two linear layers
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 16, 16, 32)).shape == (3,)
        assert model(torch.randn(1, 1, 16, 16, 32)).shape == (1,)


def test_first_axis_is_the_time_axis():
    """The stem keeps X (r3d's time axis, stride 1) and halves Y and Z, as in the authors' layer3
    map."""
    model = build_model().eval()
    seen = []
    model.feature_layer.register_forward_hook(
        lambda module, inputs, output: seen.append(output.shape)
    )
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 24, 48))
    # X 32 -> 32 (stem) -> 16 (layer2) -> 8 (layer3); Y 24 -> 12 -> 6 -> 3; Z 48 -> 24 -> 12 -> 6
    assert seen == [torch.Size([1, 256, 8, 3, 6])]


def save_r3d(path, drop=(), extra=None, **replace):
    torch.manual_seed(1)
    state = r3d_18(weights=None).state_dict()
    state = {k: v for k, v in state.items() if k not in drop}
    state.update(extra or {})
    state.update(replace)
    torch.save(state, path)
    return state


def test_pretrained_backbone_is_loaded_except_fc(tmp_path):
    saved = save_r3d(tmp_path / "r3d_18.pth")
    model = build_model(pretrained=str(tmp_path / "r3d_18.pth"))
    loaded = model.backbone.state_dict()
    for key, value in saved.items():
        if key.startswith("fc."):
            assert key not in loaded
        else:
            assert torch.equal(loaded[key], value), key
    assert model.backbone.fc[0].weight.shape == (256, 512)


def test_pretrained_without_batch_counters_loads(tmp_path):
    saved = r3d_18(weights=None).state_dict()
    counters = [k for k in saved if k.endswith("num_batches_tracked")]
    save_r3d(tmp_path / "old.pth", drop=counters)
    build_model(pretrained=tmp_path / "old.pth")


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(drop=("layer2.0.conv1.0.weight",)), "layer2.0.conv1.0.weight"),
        (dict(extra={"head.weight": torch.zeros(2)}), "head.weight"),
        ({"stem.0.weight": torch.zeros(64, 1, 3, 7, 7)}, "stem.0.weight"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_pretrained_mismatch_names_file_and_key(tmp_path, change, named):
    path = tmp_path / "wrong.pth"
    save_r3d(path, **change)
    with pytest.raises(ValueError) as error:
        build_model(pretrained=path)
    assert str(path) in str(error.value) and named in str(error.value)


def test_pretrained_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_model(pretrained=tmp_path / "absent.pth")


def write_checkpoint(path, hidden=32):
    torch.manual_seed(3)
    model = build_model(hidden=hidden)
    with torch.no_grad():
        model.output_layer.bias.fill_(60.0)
    torch.save(
        {
            "model": model.state_dict(),
            "epoch": 1,
            "val_mae": 1.0,
            "input_shape": [16, 16, 32],
            "config": {"hidden": hidden, "bf16": True, "channels_last": True},
        },
        path,
    )
    return model.eval()


def test_load_trained_round_trip(tmp_path):
    model = write_checkpoint(tmp_path / "checkpoint.pt")
    loaded, meta = load_trained(tmp_path / "checkpoint.pt")
    assert not loaded.training and meta["epoch"] == 1 and "model" not in meta
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_predict_matches_the_model_and_keeps_order(tmp_path):
    model = write_checkpoint(tmp_path / "checkpoint.pt")
    rng = np.random.default_rng(0)
    eids = ["1000007", "1000002", "1000031", "1000004", "1000001"]  # not sorted
    volumes, items = [], []
    for eid in eids:
        volume = rng.normal(0, 1, (16, 16, 32)).astype(np.float16)
        np.save(tmp_path / f"{eid}.npy", volume)
        volumes.append(volume)
        items.append((eid, str(tmp_path / f"{eid}.npy")))
    table, timing = predict(tmp_path / "checkpoint.pt", items, batch_size=2, device="cpu")
    with torch.no_grad():
        expected = model(torch.from_numpy(np.stack(volumes).astype(np.float32))[:, None]).numpy()
    assert isinstance(table, pd.DataFrame) and list(table.columns) == ["eid", "predicted"]
    assert table["eid"].tolist() == eids
    np.testing.assert_allclose(table["predicted"].to_numpy(), expected, rtol=1e-5, atol=1e-4)
    assert timing["device"] == "cpu" and timing["n"] == 5
    assert timing["seconds"] > 0 and timing["seconds_per_sample"] == pytest.approx(
        timing["seconds"] / 5
    )


def test_predict_nothing(tmp_path):
    write_checkpoint(tmp_path / "checkpoint.pt")
    table, timing = predict(tmp_path / "checkpoint.pt", [], device="cpu")
    assert len(table) == 0 and timing["n"] == 0


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a torch file", "cannot be read as a checkpoint.pt written by train_age_model"),
        ({"weights": {}}, "is not a checkpoint.pt written by train_age_model: it lacks model and"),
        (
            {"model": {"fc.weight": torch.zeros(2)}, "config": {"hidden": 32}},
            "weights do not fit the model its config builds",
        ),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, content, message):
    path = tmp_path / "given.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message) as error:
        load_trained(path)
    assert str(path) in str(error.value)
