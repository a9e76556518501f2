"""Train the 3D ResNet-18 age model; resumes from model/state.pt after a kill."""

from pathlib import Path

from ageatlas.cohort import read_participant_tsv
from ageatlas import logs
from ageatlas.train import TrainConfig, train

logs.to_file(snakemake.log[0])
ages = read_participant_tsv(snakemake.input.cohort).set_index("eid")["age"]


def items(paths):
    return [(str(path), float(ages[Path(path).stem])) for path in paths]


settings = {k: v for k, v in snakemake.params.train.items() if k not in ("gpus", "runtime")}
config = TrainConfig(
    **settings,
    seed=snakemake.params.seed,
    pretrained=snakemake.params.model["pretrained"],
    hidden=snakemake.params.model["hidden"],
)
gpus = int(snakemake.resources.get("gpu", 0))
train(
    items(snakemake.input.train),
    items(snakemake.input.val),
    Path(snakemake.output.checkpoint).parent,
    config,
    world_size=gpus if gpus > 1 else None,
)
