"""Register one test participant to its group's atlas (affine, then SVFFD) and judge it."""

import logging

import torch

from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs
from ageatlas.core.device import pick_device
from ageatlas.core.paths import stitched_path
from ageatlas.explain import register as reg
from ageatlas.explain import registration_settings

logs.to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
log = logging.getLogger("register")
eid, group = snakemake.wildcards.eid, snakemake.wildcards.group
cohort = read_participant_tsv(snakemake.input.cohort).set_index("eid")
if eid not in cohort.index or cohort.loc[eid, "group"] != group:
    raise ValueError(f"participant {eid} is not in group {group} of {snakemake.input.cohort}")
section = snakemake.params.registration
registration, record = reg.register_files(
    stitched_path(snakemake.input.stitched, eid, "W"),
    snakemake.input.atlas,
    registration_settings.settings_from_config(section),
    max_folding_share=section["max_folding_share"],
    fixed_normalised=snakemake.params.built_atlas,
    device=pick_device(None, "registration"),
)
reg.save_outcome(
    registration,
    {"eid": eid, "group": group, **record},
    snakemake.output.transform,
    snakemake.output.record,
)
log.info("participant %s to atlas %s: %s", eid, group, record)
