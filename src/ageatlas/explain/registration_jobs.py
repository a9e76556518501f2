"""One participant's registration work, as the batch rules run it (ageatlas.core.batch_run).

Module-level functions of keyword arguments: a batch's process pool
receives them by reference. Each writes its outputs atomically and returns
what its log and record keep. A participant that does not register is a
failed record (registration QC), not an exception; an exception here is a
broken input, which the batch records as that participant's failure.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np
import torch

from ageatlas.core.device import pick_device
from ageatlas.core.files import save_nifti
from ageatlas.explain import register as reg
from ageatlas.explain import registration_settings
from ageatlas.explain.maps import nan_map

log = logging.getLogger(__name__)


def _threads(torch_threads: int | None) -> None:
    if torch_threads:
        torch.set_num_threads(torch_threads)


@functools.lru_cache(maxsize=2)
def _prepared_atlas(
    paths: tuple[str, ...], mtimes_ns: tuple[int, ...], section: str, built_atlas: bool, device: str
):
    """The atlas read, normalised and on the device once per job (a GPU batch registers its
    participants in turn in one process)."""
    settings = registration_settings.settings_from_config(json.loads(section))
    return reg.prepare_fixed(
        reg.load_channels(paths),
        settings,
        device=torch.device(device),
        fixed_normalised=built_atlas,
    )


def register_to_atlas(
    *,
    eid: str,
    group: str,
    images: Sequence[str],
    atlas: Sequence[str],
    transform_out: str,
    record_out: str,
    section: Mapping,
    built_atlas: bool,
    torch_threads: int | None = None,
) -> dict:
    """Register a test participant's images (one per registration channel: water, then any
    other) to its group's atlas, which has the same channels (affine, then SVFFD)."""
    _threads(torch_threads)
    device = pick_device(None, "registration")
    fixed = _prepared_atlas(
        tuple(str(p) for p in atlas),
        tuple(os.stat(p).st_mtime_ns for p in atlas),
        json.dumps(dict(section), sort_keys=True),
        bool(built_atlas),
        str(device),
    )
    registration, record = reg.register_prepared(images, fixed, section["max_folding_share"])
    record = {"eid": eid, "group": group, **record}
    reg.save_outcome(registration, record, transform_out, record_out)
    log.info("participant %s to atlas %s: %s", eid, group, record)
    return {"status": record["status"]}


def register_atlas_member(
    *,
    eid: str,
    images: Sequence[str],
    template: Sequence[str],
    transform_out: str,
    record_out: str,
    warped_out: Sequence[str],
    section: Mapping,
    torch_threads: int | None = None,
) -> dict:
    """Register an atlas member to its group's current template (one image of each per
    registration channel); keep its warped images."""
    from ageatlas.explain.atlas import warped_member

    _threads(torch_threads)
    settings = registration_settings.settings_from_config(section)
    registration, record = reg.register_files(
        images,
        template,
        settings,
        max_folding_share=section["max_folding_share"],
        fixed_normalised=True,
        device=pick_device(None, "registration"),
    )
    reg.save_outcome(registration, record, transform_out, record_out)
    if registration is None:
        # Left out of the template (atlas_update reads the record); NaN so it can never be
        # averaged by mistake.
        warped = [nan_map(nib.load(template[0]), "registration failed: not an image")] * len(
            warped_out
        )
        log.warning("participant %s failed: %s", eid, "; ".join(record["reasons"]))
    else:
        warped = [warped_member(registration, nib.load(p), settings.clip) for p in images]
        log.info("participant %s: %s", eid, record)
    for image, out in zip(warped, warped_out, strict=True):
        save_nifti(out, image)
    return {"status": record["status"]}


def warp_map(
    *, eid: str, gradcam: str, transform: str, atlas: str, out: str, torch_threads=None
) -> dict:
    """Warp a participant's attribution map into its group's atlas with its registration."""
    _threads(torch_threads)
    try:
        # NaN where atlas space lies outside this participant's field of view: the population
        # mean and SD leave those voxels out instead of averaging in zeros.
        warped = reg.load_outcome(transform).warp(nib.load(gradcam), order=1, mark_outside=True)
        covered = float((~np.isnan(np.asanyarray(warped.dataobj))).mean())
        log.info("participant %s warped; %.1f%% of atlas voxels covered", eid, 100 * covered)
    except reg.RegistrationFailed as failed:
        # The population rules leave this participant out (registration record); NaN makes any
        # accidental average visibly wrong instead of quietly biased.
        warped = nan_map(nib.load(atlas), "registration failed: not a map")
        log.warning("participant %s: %s", eid, failed)
        covered = 0.0
    save_nifti(out, warped)
    return {"covered": round(covered, 4)}
