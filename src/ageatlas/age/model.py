"""The age regressor: torchvision's 3D ResNet-18 (r3d_18) with a one-channel input.

As in the authors' code (AgeFormer, branch resnet): a learned 1x1x1
convolution maps the single MRI channel to the three channels the video
stem expects (rather than repeating the channel), and the head is
Linear(512, hidden) followed by Linear(hidden, 1) with no activation in
between. The input tensor is (B, 1, X, Y, Z); r3d treats X (left-right) as
its "time" axis. Nothing is ever downloaded: pretrained weights come from a
local file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models.video import r3d_18

# BatchNorm's batch counter is not a weight; older exports lack it.
_OPTIONAL_KEYS = ("num_batches_tracked",)


class AgeRegressor(nn.Module):
    """r3d_18 behind a learned 1 -> 3 channel 1x1x1 convolution; returns ages of shape (B,)."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.adapter = nn.Conv3d(1, 3, kernel_size=1)
        self.backbone = r3d_18(weights=None)
        self.backbone.fc = nn.Sequential(nn.Linear(512, hidden), nn.Linear(hidden, 1))

    @property
    def feature_layer(self) -> nn.Module:
        """The layer Grad-CAM reads (layer3, as in the paper)."""
        return self.backbone.layer3

    @property
    def output_layer(self) -> nn.Linear:
        return self.backbone.fc[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(x)).squeeze(1)


def build_model(pretrained: str | Path | None = None, hidden: int = 256) -> AgeRegressor:
    """The untrained age model; `pretrained` is a local torchvision r3d_18 state_dict (fc is not
    used)."""
    model = AgeRegressor(hidden)
    if pretrained is not None:
        load_backbone(model.backbone, pretrained)
    return model


def load_backbone(backbone: nn.Module, path: str | Path) -> None:
    """Load an r3d_18 state_dict into `backbone`, all keys but fc; any other mismatch is an
    error."""
    load_weights(backbone, path, "torchvision r3d_18", keep=lambda key: not key.startswith("fc."))


def load_weights(
    module: nn.Module,
    path: str | Path,
    name: str,
    *,
    keep: Callable[[str], bool],
    adapt: Callable[[dict], dict] | None = None,
) -> None:
    """Load the keys of a local state_dict for which `keep` holds into `module` (`name` in
    messages).

    `adapt` may rewrite the kept weights first (e.g. an RGB first convolution
    for a two-channel input). A missing (batch counters aside), unexpected or
    misshapen kept key is an error that names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path}: no such file (nothing is downloaded)")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(
            f"pretrained weights {path}: expected a state_dict, found {type(loaded).__name__}"
        )
    loaded = {k: v for k, v in loaded.items() if keep(k)}
    if adapt is not None:
        loaded = adapt(loaded)
    expected = {k: v for k, v in module.state_dict().items() if keep(k)}
    missing = sorted(k for k in expected.keys() - loaded.keys() if not k.endswith(_OPTIONAL_KEYS))
    unexpected = sorted(loaded.keys() - expected.keys())
    shapes = sorted(
        f"{k} {tuple(getattr(loaded[k], 'shape', ()))} != {tuple(expected[k].shape)}"
        for k in loaded.keys() & expected.keys()
        if getattr(loaded[k], "shape", None) != expected[k].shape
    )
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shapes", shapes),
        )
        if keys
    ]
    if problems:
        raise ValueError(f"pretrained weights {path} do not fit {name}: " + "; ".join(problems))
    module.load_state_dict(loaded, strict=False)


def load_trained(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    build: Callable[[dict], nn.Module] | None = None,
) -> tuple[nn.Module, dict]:
    """The model of a training checkpoint.pt in eval mode on `device`, and the checkpoint's
    metadata.

    `build` makes the untrained model from the checkpoint's config (default:
    the 3D AgeRegressor; `ageatlas.age.train.load_checkpoint` passes others).
    A file that is not such a checkpoint (another kind of .pt, another
    model's weights) raises a ValueError that names it and says what differs.
    """
    what = "a checkpoint.pt written by train_age_model"
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike
        raise ValueError(
            f"{checkpoint} cannot be read as {what} (torch.load, weights only): {error}"
        ) from error
    missing = (
        ["model", "config"]
        if not isinstance(state, dict)
        else [key for key in ("model", "config") if key not in state]
    )
    if missing or not isinstance(state["config"], dict):
        raise ValueError(
            f"{checkpoint} is not {what}: it lacks {' and '.join(missing) or 'a config dict'}"
            + (f" (it holds {sorted(map(str, state))[:8]})" if isinstance(state, dict) else "")
        )
    try:
        model = (
            build(state["config"])
            if build is not None
            else AgeRegressor(int(state["config"].get("hidden", 256)))
        )
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"{checkpoint}'s weights do not fit the model its config builds: {error}"
        ) from error
    meta = {k: v for k, v in state.items() if k != "model"}
    return model.to(device).eval(), meta
