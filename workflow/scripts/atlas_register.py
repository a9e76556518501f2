"""Register one atlas member to its group's current template; keep the warped image."""

import logging

import nibabel as nib
import numpy as np

import torch

from ageatlas import logs
from ageatlas.atlas import warped_member
from ageatlas import register as reg
from ageatlas.ingest import stitched_path

logs.to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
log = logging.getLogger("atlas_register")
section = snakemake.params.registration
settings = reg.settings_from_config(section)
water = stitched_path(snakemake.input.stitched, snakemake.wildcards.eid, "W")
registration, record = reg.register_files(
    water, snakemake.input.template, settings,
    max_folding_share=section["max_folding_share"],
    fixed_normalised=True, device=reg.pick_device(log),
)
reg.save_outcome(registration, record, snakemake.output.transform, snakemake.output.record)
template = nib.load(snakemake.input.template)
if registration is None:
    # Left out of the template (atlas_update reads the record); NaN so it can never be averaged by mistake.
    warped = nib.Nifti1Image(np.full(template.shape, np.nan, np.float32), template.affine)
    log.warning("participant %s failed: %s", snakemake.wildcards.eid, "; ".join(record["reasons"]))
else:
    warped = warped_member(registration, nib.load(water), settings.clip)
    log.info("participant %s: %s", snakemake.wildcards.eid, record)
nib.save(warped, snakemake.output.warped)
