"""Attribution maps of one batch of test participants, each saved with its stitched image's
affine; one process, so the model loads once per batch."""

from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core.batch_run import Task, run_for_rule
from ageatlas.core.paths import stitched_path
from ageatlas.explain.gradcam import cam_for_participant

params, inputs = snakemake.params, snakemake.input
settings = params.gradcam
cohort = read_participant_tsv(inputs.cohort)
common = dict(
    checkpoint=inputs.checkpoint,
    layer_name=settings["layer"],
    method=settings["method"],
    placement=settings["placement"],
    normalise=settings["method"] == "gradcam"
    if settings["normalise"] is None
    else settings["normalise"],
    target=settings["target"],
    # The deviation target's reference: the training mean age (the output bias's start).
    reference_age=float(cohort.loc[cohort["split"] == "train", "age"].mean()),
    reference_path=inputs.reference or None,
    steps=settings["steps"],
    block=settings["block"],
    downsample_factor=params.downsample,
)
tasks = []
for eid in params.eids:
    cache = params.cache.format(eid=eid)
    water = str(stitched_path(params.stitched.format(eid=eid), eid, "W"))
    out = params.out.format(eid=eid)
    kwargs = dict(common, cache_path=cache, water_nifti_path=water, out_path=out)
    model_inputs = (
        inputs.checkpoint,
        cache,
        water,
        *([inputs.reference] if inputs.reference else []),
    )
    tasks.append(Task(eid, model_inputs, (out,), kwargs))
run_for_rule(snakemake, cam_for_participant, tasks, settings, pooled=False)
