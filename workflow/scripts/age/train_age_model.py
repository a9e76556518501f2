"""Train the 3D ResNet-18 age model (or the 2.5D baseline); resumes from state.pt after a kill."""

from pathlib import Path

from ageatlas.age.train import train
from ageatlas.baseline import model as baseline
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs, provenance

logs.to_file(snakemake.log[0])
ages = read_participant_tsv(snakemake.input.cohort).set_index("eid")["age"]


def items(paths):
    return [(str(path), float(ages[Path(path).stem])) for path in paths]


# The 2.5D baseline's rule (use rule ... with) says family "2.5d".
config_type = baseline.config_type(snakemake.params.get("family"))
settings = {**snakemake.params.train, **snakemake.params.model, "seed": snakemake.params.seed}
config = config_type.from_dict(
    settings
)  # gpus, runtime and other rule settings are not the trainer's
gpus = int(snakemake.resources.get("gpu", 0))
train(
    items(snakemake.input.train),
    items(snakemake.input.val),
    Path(snakemake.output.checkpoint).parent,
    config,
    world_size=gpus if gpus > 1 else None,
)
provenance.record(snakemake)
