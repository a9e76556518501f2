"""Zip -> stitched NIfTI for one participant; data defects end in qc.json, not a failure."""

from ageatlas.core import logs
from ageatlas.ingest.grid import Grid
from ageatlas.ingest.participant import ingest_participant
from ageatlas.ingest.stitch import StitchOptions

logs.to_file(snakemake.log[0])
cfg = snakemake.params.stitch
ingest_participant(
    snakemake.wildcards.eid,
    snakemake.input.zip,
    snakemake.output[0],
    Grid(tuple(cfg["grid"]["shape"]), tuple(cfg["grid"]["spacing"])),
    StitchOptions(
        trim_slices=cfg["trim_slices"],
        blend=cfg["blend"],
        harmonise=cfg["harmonise"],
        fix_swaps=cfg["fix_swaps"],
        n4=cfg["n4"],
        contrasts=tuple(cfg["contrasts"]),
    ),
    preview=cfg["preview"],
)
