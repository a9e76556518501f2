"""Attribution maps of one batch of test participants, each saved with its stitched image's
affine; one process, so the model loads once per batch."""

from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core.batch_run import Task, Together, run_for_rule
from ageatlas.core.paths import stitched_path
from ageatlas.core.vocabulary import CAM_METHODS
from ageatlas.explain.gradcam import cam_for_participant
from ageatlas.explain.gradcam_batch import cams_for_participants

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
    shifts=settings["shifts"],
    downsample_factor=params.downsample,
)
group_of = cohort.set_index("eid")["group"]
tasks = []
for eid in params.eids:
    cache = params.cache.format(eid=eid)
    water = str(stitched_path(params.stitched.format(eid=eid), eid, "W"))
    out = params.out.format(eid=eid)
    kwargs = dict(common, cache_path=cache, water_nifti_path=water, out_path=out)
    reference = [inputs.reference] if inputs.reference else []
    if params.atlases:  # gradcam.reference group_atlas: the group's atlas in this body
        group = group_of[eid]
        atlas = (params.atlases[group], params.registration.format(group=group, eid=eid))
        kwargs["atlas"], reference = atlas, list(atlas)
    tasks.append(Task(eid, (inputs.checkpoint, cache, water, *reference), (out,), kwargs))
if settings["method"] in CAM_METHODS:
    # Layer methods: the model loads once and maps batch_size participants per pass.
    layer_options = {k: common[k] for k in ("layer_name", "method", "placement", "normalise")}
    layer_options.update(target=common["target"], reference_age=common["reference_age"])

    def layer_maps(chunk):
        items = [
            (t.eid, t.kwargs["cache_path"], t.kwargs["water_nifti_path"], t.kwargs["out_path"])
            for t in chunk
        ]
        return cams_for_participants(
            inputs.checkpoint,
            items,
            batch_size=settings["batch_size"],
            downsample_factor=params.downsample,
            **layer_options,
        )

    work = Together(layer_maps)
else:
    work = cam_for_participant  # input methods (captum): one participant at a time
# batch_size changes how maps are computed together, not what they are.
fingerprinted = {k: v for k, v in settings.items() if k != "batch_size"}
run_for_rule(snakemake, work, tasks, fingerprinted, pooled=False)
