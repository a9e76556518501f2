"""The 2.5D baseline of Langner et al. (2019): VGG16 with batch norm on the water/fat projections.

Model: torchvision's vgg16_bn (nothing is downloaded) with a two-channel
first convolution, the features average-pooled to 8 x 8 (the identity at the
256 x 256 input, so the flatten is Langner's 512*8*8) and a classifier
512*8*8 -> 4096 -> 4096 -> 1 with ReLU and dropout.

Training as Langner: Adam lr 1e-4, batch 32, random translations of up to
16 pixels (training batches only), MSE loss or, the workflow's default, L1
as the 3D model. Everything else is the 3D model's trainer and predictor
(`ageatlas.age.train`, `ageatlas.age.predict`), given a `BaselineConfig`: the
plateau scheduler, early stopping, the output bias starting at the training
mean age, bf16 autocast and channels_last on CUDA, resume after a kill, DDP,
the best-validation checkpoint and metrics.tsv.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision.models import vgg16_bn

from ageatlas.age.model import load_weights
from ageatlas.age.train import load_checkpoint
from ageatlas.age.train_config import TrainConfig
from ageatlas.age.train_data import CacheDataset
from ageatlas.baseline.projection import load_projection
from ageatlas.core.device import pick_device
from ageatlas.explain import gradcam

log = logging.getLogger("ageatlas.baseline.model")

LOSSES = ("mse", "l1")
IN_CHANNELS = 2  # water, fat


@dataclass
class BaselineConfig(TrainConfig):
    """TrainConfig for the 2.5D model: Langner's batch and head, translations, the loss by name."""

    batch_size: int = 32
    accumulate: int = 1
    hidden: int = 4096
    pretrained: str | None = None  # local vgg16_bn state_dict; its features are loaded
    loss: str = "l1"  # "l1" (the 3D model) or "mse" (Langner)
    max_shift: int = 16  # random translation in pixels, each axis, training batches only
    dropout: float = 0.5
    pool: int = 8  # features are average-pooled to pool x pool

    CHANNELS_LAST: ClassVar[torch.memory_format] = torch.channels_last  # 2D projections

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, not {self.max_shift}")

    def build_model(self, pretrained: bool = True) -> nn.Module:
        return build_baseline(
            self.pretrained if pretrained else None, self.hidden, self.dropout, self.pool
        )

    def dataset(self, items: Sequence[tuple[str, float]]) -> Dataset:
        return CacheDataset(items, add_channel=False)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_shift(x, self.max_shift, generator)

    def sample_loss(self, error: torch.Tensor) -> torch.Tensor:
        return error.square() if self.loss == "mse" else error.abs()


def config_type(family: str | None) -> type[TrainConfig]:
    """The config class of a model family, as the workflow's rules name it: "3d" (or None) or
    "2.5d"."""
    types = {None: TrainConfig, "3d": TrainConfig, "2.5d": BaselineConfig}
    if family not in types:
        raise ValueError(f"model family must be '3d' or '2.5d', not {family!r}")
    return types[family]


class ProjectionRegressor(nn.Module):
    """vgg16_bn with 2 input channels and one output; returns ages of shape (B,).

    The attribute names are torchvision's (features, avgpool, classifier), so
    torchvision vgg16_bn state_dicts load by name.
    """

    def __init__(self, hidden: int = 4096, dropout: float = 0.5, pool: int = 8):
        super().__init__()
        self.features = _vgg16_bn_features()
        first = self.features[0]
        self.features[0] = nn.Conv2d(
            IN_CHANNELS,
            first.out_channels,
            first.kernel_size,
            first.stride,
            first.padding,
            device=first.weight.device,
        )
        _init_like_torchvision(self.features[0])
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(512 * pool * pool, hidden),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        for module in self.classifier:
            _init_like_torchvision(module)

    @property
    def feature_layer(self) -> nn.Module:
        """The layer Grad-CAM reads: the last ReLU of the last convolutional block (before its
        max-pool)."""
        return self.features[-2]

    @property
    def output_layer(self) -> nn.Linear:
        return self.classifier[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1)).squeeze(1)


def _vgg16_bn_features() -> nn.Sequential:
    """The convolutional part of torchvision's vgg16_bn, initialised as torchvision does.

    vgg16_bn is built on the meta device: its 1000-class classifier, which
    is replaced anyway, would take seconds to initialise (120M weights).
    """
    with torch.device("meta"):
        features = vgg16_bn(weights=None).features
    features = features.to_empty(device=torch.get_default_device())
    for module in features.modules():
        _init_like_torchvision(module)
    return features


def _init_like_torchvision(module: nn.Module) -> None:
    """torchvision's VGG initialisation of a convolution, batch norm or linear layer."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
        module.reset_running_stats()
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0, 0.01)
        nn.init.zeros_(module.bias)


def build_baseline(
    pretrained: str | Path | None = None, hidden: int = 4096, dropout: float = 0.5, pool: int = 8
) -> ProjectionRegressor:
    """The untrained 2.5D model; `pretrained` is a local torchvision vgg16_bn state_dict."""
    model = ProjectionRegressor(hidden, dropout, pool)
    if pretrained is not None:
        load_features(model, pretrained)
    return model


def load_features(model: ProjectionRegressor, path: str | Path) -> None:
    """Load the `features.*` weights of a vgg16_bn state_dict; the classifier is not used.

    A three-channel (RGB, ImageNet) first convolution is averaged over its
    input channels and repeated for water and fat; any other missing,
    unexpected or misshapen key is an error that names it.
    """

    def two_channels(state: dict) -> dict:
        first = state.get("features.0.weight")
        if isinstance(first, torch.Tensor) and first.ndim == 4 and first.shape[1] == 3:
            state["features.0.weight"] = first.mean(dim=1, keepdim=True).repeat(
                1, IN_CHANNELS, 1, 1
            )
        return state

    load_weights(
        model,
        path,
        "torchvision vgg16_bn",
        keep=lambda key: key.startswith("features."),
        adapt=two_channels,
    )


def load_baseline(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[ProjectionRegressor, dict]:
    """The model of a baseline checkpoint.pt in eval mode on `device`, and the checkpoint's
    metadata."""
    model, _, meta = load_checkpoint(checkpoint, device, BaselineConfig)
    return model, meta


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of a (B, C, H, W) batch by its own (dy, dx) in [-max_shift, max_shift];
    zeros fill.

    Output pixel (y, x) is input pixel (y - dy, x - dx). Offsets come from
    `generator` (CPU), so a seeded run draws the same ones on any device.
    """
    if max_shift <= 0:
        return x
    _, _, h, w = x.shape
    m = int(max_shift)
    shifts = torch.randint(-m, m + 1, (x.shape[0], 2), generator=generator).tolist()
    padded = F.pad(x, (m, m, m, m))
    return torch.stack(
        [
            padded[i, :, m - dy : m - dy + h, m - dx : m - dx + w]
            for i, (dy, dx) in enumerate(shifts)
        ]
    )


# ---- Grad-CAM (paper Figure 9) ------------------------------------------------


def grad_cam_2d(model: ProjectionRegressor, image: np.ndarray | torch.Tensor) -> gradcam.CamResult:
    """Grad-CAM of one (2, H, W) projection on the last convolutional block; map (H, W) in
    [0, 1]."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if x.ndim != 3:
        raise ValueError(f"grad_cam_2d needs one (C, H, W) image, got shape {tuple(x.shape)}")
    return gradcam.grad_cam(model, x[None], model.feature_layer)


def gradcam_figure(
    checkpoint: str | Path,
    items: list[tuple[str, str]],
    path: str | Path,
    *,
    ages: dict[str, float] | None = None,
    device: str | None = None,
) -> list[dict]:
    """Figure 9: Grad-CAM overlays on the projections of (eid, projection path) items, one row each.

    Returns per participant its eid and predicted age.
    """
    from ageatlas.baseline.figures import projection_cam_figure

    if not items:
        raise ValueError("the Grad-CAM figure needs at least one participant")
    device = pick_device(device, task="Grad-CAM")
    model, _ = load_baseline(checkpoint, device)
    images, cams, titles, rows = [], [], [], []
    for eid, projection in items:
        image = load_projection(projection)
        result = grad_cam_2d(model, image)
        age = (ages or {}).get(eid)
        images.append(image)
        cams.append(result.map.numpy())
        titles.append(
            f"{eid}, age {age:.1f}, predicted {result.predicted_age:.1f}"
            if age is not None
            else f"{eid}, predicted {result.predicted_age:.1f}"
        )
        rows.append({"eid": eid, "predicted": result.predicted_age})
    projection_cam_figure(images, cams, titles, path)
    log.info("Grad-CAM figure of %d participant(s) written to %s", len(items), path)
    return rows
