"""Layer attribution maps of many participants: the checkpoint loaded once, several participants
per forward and backward pass.

One participant per job leaves a GPU idle between small passes and reloads
the checkpoint each time; here the model is loaded once and each batch of
participants costs one pass (`ageatlas.explain.gradcam.layer_cams`: in eval
mode each sample's gradient is its own, so a batched map is the
one-at-a-time map up to floating-point summation order). Every map is read
and saved exactly as `cam_for_participant` reads and saves it.

A participant whose files cannot be read, mapped or written gets an error
entry, and the others go on: a batch that fails (one broken input, or too
large for the GPU's memory) is run again one participant at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ageatlas.age.model import load_trained
from ageatlas.core.device import pick_device
from ageatlas.core.vocabulary import CAM_METHODS
from ageatlas.explain.gradcam import (
    LAYERS,
    ParticipantInput,
    check_input_shape,
    layer_cams,
    model_seed,
    read_participant,
    target_sign,
)

log = logging.getLogger("ageatlas.explain.gradcam")


@dataclass
class _Pending:
    index: int
    eid: object
    participant: ParticipantInput
    volume: torch.Tensor
    out_path: object
    seconds: float  # reading so far


def cams_for_participants(
    checkpoint,
    items: Sequence[tuple],
    *,
    batch_size: int = 4,
    layer_name: str = "layer3",
    method: str = "gradcam",
    normalise: bool = True,
    placement: str = "receptive_field",
    device=None,
    downsample_factor: int | None = None,
    target: str = "age",
    reference_age: float | None = None,
) -> list[dict]:
    """Maps of (eid, cache_path, water_nifti_path, out_path) items with a layer method, each saved
    on its stitched grid as `cam_for_participant` saves it.

    Returns one dict per item, in order: {"eid", "status": "ok", "predicted_age",
    "method", "seconds", "device", "batch"} (seconds: its reading and saving
    plus its share of the batch's pass), or {"eid", "status": "error",
    "error"}. A wrong option or checkpoint raises: that is no participant's fault.
    """
    if layer_name not in LAYERS:
        raise ValueError(f"layer_name must be one of {LAYERS}, not {layer_name!r}")
    if method not in CAM_METHODS:
        raise ValueError(f"batched maps take a layer method {CAM_METHODS}, not {method!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    target_sign(target, reference_age)  # refuses a bad target before any participant
    device = pick_device(device, task="Grad-CAM")
    model, meta = load_trained(checkpoint, device)
    seed, layer = model_seed(meta), getattr(model.backbone, layer_name)
    options = dict(
        method=method,
        normalise=normalise,
        target=target,
        reference_age=reference_age,
        placement=placement,
    )
    results: list[dict | None] = [None] * len(items)
    shapes_checked: set[tuple] = set()

    def run(batch: list[_Pending]) -> None:
        for index, info in _run_batch(model, layer, batch, options, str(device)):
            results[index] = info

    pending: list[_Pending] = []
    for index, (eid, cache_path, water_path, out_path) in enumerate(items):
        start = time.perf_counter()
        try:
            participant = read_participant(cache_path, water_path, downsample_factor)
            shape = tuple(participant.cached.shape)
            if shape not in shapes_checked:
                check_input_shape(meta, cache_path, shape)
                shapes_checked.add(shape)
            volume = participant.volume(seed)
        except Exception as error:  # noqa: BLE001 - this participant's error entry
            results[index] = _error(eid, error)
            continue
        if pending and pending[0].volume.shape != volume.shape:
            run(pending)  # a batch holds one input shape
            pending = []
        pending.append(
            _Pending(index, eid, participant, volume, out_path, time.perf_counter() - start)
        )
        if len(pending) == batch_size:
            run(pending)
            pending = []
    if pending:
        run(pending)
    return results


def _run_batch(model, layer, batch: list[_Pending], options: dict, device: str):
    """(index, info) for each participant of the batch; a failed pass is retried one by one."""
    start = time.perf_counter()
    try:
        cams = layer_cams(model, torch.cat([p.volume for p in batch]), layer, **options)
    except Exception as error:  # noqa: BLE001 - the participants' error entries
        if len(batch) == 1:
            yield batch[0].index, _error(batch[0].eid, error)
            return
        log.warning("a batch of %d failed (%s): one participant at a time", len(batch), error)
        for p in batch:
            yield from _run_batch(model, layer, [p], options, device)
        return
    share = (time.perf_counter() - start) / len(batch)
    for p, cam in zip(batch, cams):
        saving = time.perf_counter()
        try:
            p.participant.save(cam.map.numpy(), p.out_path)
        except Exception as error:  # noqa: BLE001 - this participant's error entry
            yield p.index, _error(p.eid, error)
            continue
        seconds = p.seconds + share + time.perf_counter() - saving
        yield (
            p.index,
            {
                "eid": p.eid,
                "status": "ok",
                "predicted_age": cam.predicted_age,
                "method": options["method"],
                "seconds": round(seconds, 3),
                "device": device,
                "batch": len(batch),
            },
        )


def _error(eid, error: Exception) -> dict:
    log.warning("participant %s: no map: %s: %s", eid, type(error).__name__, error)
    return {"eid": eid, "status": "error", "error": f"{type(error).__name__}: {error}"}
