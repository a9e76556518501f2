"""Register one atlas member to its group's current template; keep the warped image."""

import logging

import nibabel as nib
import torch

from ageatlas.core import logs, provenance
from ageatlas.core.device import pick_device
from ageatlas.core.paths import stitched_path
from ageatlas.explain import register as reg
from ageatlas.explain import registration_settings
from ageatlas.explain.atlas import warped_member
from ageatlas.explain.maps import nan_map

logs.to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
log = logging.getLogger("atlas_register")
section = snakemake.params.registration
settings = registration_settings.settings_from_config(section)
water = stitched_path(snakemake.input.stitched, snakemake.wildcards.eid, "W")
registration, record = reg.register_files(
    water,
    snakemake.input.template,
    settings,
    max_folding_share=section["max_folding_share"],
    fixed_normalised=True,
    device=pick_device(None, "registration"),
)
reg.save_outcome(registration, record, snakemake.output.transform, snakemake.output.record)
template = nib.load(snakemake.input.template)
if registration is None:
    # Left out of the template (atlas_update reads the record); NaN so it can never be averaged by
    # mistake.
    warped = nan_map(template, "registration failed: not an image")
    log.warning("participant %s failed: %s", snakemake.wildcards.eid, "; ".join(record["reasons"]))
else:
    warped = warped_member(registration, nib.load(water), settings.clip)
    log.info("participant %s: %s", snakemake.wildcards.eid, record)
nib.save(warped, snakemake.output.warped)
provenance.record(snakemake)
