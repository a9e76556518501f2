# Cohort, paths and resources, known when the DAG is built (so -n, --dag,
# --rulegraph and partial targets work before anything has run). Only light
# modules are imported here: never torch or deepali
# (tests/workflow/test_conventions.py checks).
import os
from functools import lru_cache

from snakemake.exceptions import WorkflowError

from ageatlas.age import given_model
from ageatlas.cohort import phenotypes as phenotypes_lib
from ageatlas.cohort import selection
from ageatlas.cohort import table as cohort_lib
from ageatlas.core import batches, file_state, paths
from ageatlas.core.field20201 import zip_name
from ageatlas.core.jobenv import export_source_path
from ageatlas.core.vocabulary import REFERENCE_METHODS, SUBSETS, group_names
from ageatlas.explain.attribution_cost import relative_cost, relative_memory

export_source_path(os.path.join(workflow.basedir, "src"))

RESULTS = config["results_dir"]
LOGS = config["logs_dir"]
BENCHMARKS = config["benchmarks_dir"]
SYNTHETIC = config["cohort"]["source"] == "synthetic"
INSTANCE = config["cohort"]["instance"] if not SYNTHETIC else 2
# A stable path: workflow.source_path() gives a new temporary copy on every
# run, which Snakemake then sees as changed params and reruns everything.
PHENOTYPE_SCHEMA = os.path.join(
    workflow.basedir, "workflow/schemas/phenotypes.schema.yaml"
)

# Every path the rules write comes from ageatlas.core.paths (one folder per stage).
STITCHED = f"{RESULTS}/{paths.STITCHED}"
PHENOTYPE_QC = f"{RESULTS}/{paths.PHENOTYPE_QC}"
PARTICIPANT_QC = f"{RESULTS}/{paths.PARTICIPANT_QC}"
COHORT_TABLE = f"{RESULTS}/{paths.COHORT_TABLE}"
AGE = f"{RESULTS}/{paths.AGE}"
CACHE = f"{RESULTS}/{paths.CACHE}"
AGE_MODEL = f"{RESULTS}/{paths.AGE_MODEL}"
BASELINE = f"{RESULTS}/{paths.BASELINE}"
EXPLAIN = f"{RESULTS}/{paths.EXPLAIN}"
GRADCAM = f"{RESULTS}/{paths.GRADCAM}"
ATLAS_DIR = f"{RESULTS}/{paths.ATLAS}"
REGISTRATION_QC = f"{RESULTS}/{paths.REGISTRATION_QC}"
PARTICIPANT_FAILURES = f"{RESULTS}/{paths.PARTICIPANT_FAILURES}"
AGE_CHECKPOINT = f"{AGE_MODEL}/checkpoint.pt"

# A trained model given in the config (README, "Using a trained model"): the
# files and the splits it leaves to the run are checked before any job runs.
GIVEN_CHECKPOINT = given_model.given_checkpoint(config)
GIVEN_COEFFICIENTS = given_model.given_coefficients(config)
BASELINE_ENABLED = given_model.baseline_enabled(config)
_config_problems = given_model.problems(config, AGE_CHECKPOINT)
if _config_problems:
    raise WorkflowError(
        "the config cannot run:\n" + "\n".join(f"- {p}" for p in _config_problems)
    )


def unless_given(path):
    """A record of training here (metrics.tsv); none with a given model."""
    return [] if GIVEN_CHECKPOINT else path


def if_baseline(path):
    """A file of the 2.5D baseline; none when baseline.enabled resolves to false."""
    return path if BASELINE_ENABLED else []


def grows(base):
    """Minutes that grow with each retry: attempt 2 asks 2x, attempt 3 3x.

    A job killed for time (TIMEOUT) thus gets more; the bases are sized for
    full-size UK Biobank volumes (docs/measurements.md).
    """
    return lambda wildcards, attempt: base * attempt


def memory(base):
    """MB that grow with each retry, scaled by config resources.mem_scale (at least 100 MB)."""
    scaled = max(100, int(base * config["resources"]["mem_scale"]))
    return lambda wildcards, attempt: scaled * attempt


if SYNTHETIC:
    from ageatlas.synthetic.participants import make_cohort

    ZIP_DIR = f"{RESULTS}/{paths.SYNTHETIC}"
    PHENOTYPES = f"{ZIP_DIR}/phenotypes.csv"
    SYNTHETIC_COHORT = make_cohort(
        config["synthetic"]["n_participants"],
        seed=config["seed"],
        offset_sd=config["synthetic"]["age_offset_sd"],
    )
    EIDS = [str(p.eid) for p in SYNTHETIC_COHORT]
else:
    ZIP_DIR = config["cohort"]["zip_dir"]
    PHENOTYPES = config["cohort"]["phenotypes"]
    COHORT = cohort_lib.discover(
        PHENOTYPES,
        ZIP_DIR,
        phenotypes_lib.load_schema(PHENOTYPE_SCHEMA),
        config["phenotypes"]["columns"],
        INSTANCE,
    )
    EIDS = COHORT.eids

# A real cohort's zips reach Snakemake as digests (params), not as input files:
# 100,000 inputs cost every plan 14 of its 23 s in existence and mtime checks
# (docs/design.md, "Batches"). Zips that this run writes (the synthetic cohort)
# stay inputs, so the DAG has its edge.
ZIP_INPUTS = SYNTHETIC
# What phenotype QC reads of the zip folder: who has a zip, and its records.
ZIP_LISTING = (
    ""
    if SYNTHETIC
    else file_state.digest([EIDS, [(r.eid, r.reasons) for r in COHORT.records]])
)

GROUPS = group_names()
ATLAS_ITERATIONS = config["atlas"]["iterations"]
REG_GPUS = config["registration"]["gpus"]


wildcard_constraints:
    eid=r"\d+",
    batch=batches.NAME_PATTERN,
    group="|".join(GROUPS),
    subset="|".join(SUBSETS),
    iteration=r"\d+",


def participant_zip(eid):
    return f"{ZIP_DIR}/{zip_name(eid, INSTANCE)}"


def per_participant(pattern, eids, **wildcards):
    """``pattern`` for each eid: str.format, not expand(), which costs ~10x per path and
    matters with 100,000 participants (benchmarks/dag.py)."""
    return [pattern.format(eid=eid, **wildcards) for eid in eids]


def stitched_dirs(eids=None):
    return per_participant(STITCHED, EIDS if eids is None else eids)


# ---- batches: per-participant work, one job per batch of participants ------
# (ageatlas.core.batches; docs/design.md, "Batches"). A participant's batch is
# its eid mod BATCH_COUNT, the same in every per-participant rule, so the
# batch that stitched it also preprocesses it; registration counts per group.

BATCH = config["batch"]
BATCH_COUNT = batches.batch_count(len(EIDS), BATCH["size"])
STITCH_BATCHES = batches.plan(EIDS, BATCH_COUNT)

# Per-participant minutes and memory of the batch rules, at full UK Biobank size:
# written from the benchmark records by benchmarks/sizing.py --write-requests.
BATCH_REQUESTS = batches.load_requests(
    config["resources"]["batch_requests"]
    or os.path.join(workflow.basedir, "workflow/resources/batch_requests.yaml")
)
# gradcam's minutes and memory are a layer method's map; integrated gradients and occlusion
# run many passes and hold more volumes, and their jobs ask for that much longer and more
# (ageatlas.explain.attribution_cost).
BATCH_REQUESTS["gradcam"] = batches.scale_memory(
    batches.scale_minutes(
        BATCH_REQUESTS["gradcam"],
        relative_cost(
            config["gradcam"],
            [
                n // config["preprocess"]["downsample"]
                for n in config["stitch"]["grid"]["shape"]
            ],
        ),
    ),
    relative_memory(config["gradcam"]),
)


def manifest(stage_dir, rule):
    """A batch's manifest: one row per participant (status, seconds, error)."""
    return f"{stage_dir}/batches/{rule}/{{batch}}.tsv"


def batch_records(stage_dir, rule):
    """Where a batch rule keeps each participant's record (ageatlas.core.batch_run)."""
    return f"{stage_dir}/batches/{rule}/done"


STITCH_MANIFEST = manifest(f"{RESULTS}/{paths.INGEST}", "stitch")
PREPROCESS_MANIFEST = manifest(f"{RESULTS}/{paths.AGE}", "preprocess")
PROJECTION_MANIFEST = manifest(BASELINE, "projection")
GRADCAM_MANIFEST = manifest(EXPLAIN, "gradcam")
REGISTER_MANIFEST = manifest(f"{EXPLAIN}/{{group}}", "register")
WARP_MANIFEST = manifest(f"{EXPLAIN}/{{group}}", "warp_gradcam")


def literal(template):
    """A params path template with {eid} in it (params strings are expanded with wildcards)."""
    return lambda wildcards: template


# A batch holds about batch.size participants (eid mod a power of two: rarely
# more than a quarter above it): requests are sized for that, known before any
# checkpoint, the same for every batch of a rule.
BATCH_MEMBERS = max(1, int(BATCH["size"] * 1.25))


def batch_resources(rule, pooled=True, members=BATCH_MEMBERS, device="cpu", threads=0):
    """runtime and mem_mb of a batch job of about ``members`` participants, growing with
    each retry (ageatlas.core.batches.batch_request).

    pooled: batch.threads processes, each with its participant in memory;
    otherwise one process does them in turn (a model or atlas on a GPU, or Grad-CAM
    on all the job's CPU threads).
    """
    minutes, mem = batches.batch_request(
        BATCH_REQUESTS[rule][device],
        members,
        threads or BATCH["threads"],
        pooled=pooled,
        gpu=device == "cuda",
        mem_scale=config["resources"]["mem_scale"],
    )
    max_runtime = config["resources"]["max_runtime"]
    return {
        "runtime": lambda wildcards, attempt: min(
            max_runtime, int(minutes * attempt + 0.5)
        ),
        "mem_mb": lambda wildcards, attempt: mem * attempt,
    }


def stitch_members(wildcards):
    return STITCH_BATCHES[wildcards.batch]


def stitch_zips(wildcards):
    return [participant_zip(eid) for eid in stitch_members(wildcards)]


def stitch_zip_state(wildcards):
    """The batch's zips as they are now: a new or rewritten zip reruns its batch (whose
    finished participants are reused while their own zip holds)."""
    return "" if ZIP_INPUTS else file_state.state_digest(stitch_zips(wildcards))


# ---- after the cohort checkpoint: who is in which split and group ----------


@lru_cache(maxsize=4)
def _cohort_frame(path, mtime):
    return cohort_lib.read_participant_tsv(path)


def cohort_frame():
    """The cohort table (after its checkpoint), read once per version."""
    path = checkpoints.cohort_table.get().output.table
    return _cohort_frame(path, os.path.getmtime(path))


def cohort_members(*splits):
    """eids of the cohort table's given splits."""
    table = cohort_frame()
    return table.loc[table["split"].isin(splits), "eid"].tolist()


def cache_paths(*splits):
    return per_participant(CACHE, cohort_members(*splits))


@lru_cache(maxsize=64)
def _cohort_plan(path, mtime, splits, group, own_count):
    table = _cohort_frame(path, mtime)
    rows = table[table["split"].isin(splits)]
    if group is not None:
        rows = rows[rows["group"] == group]
    eids = rows["eid"].tolist()
    count = batches.batch_count(len(eids), BATCH["size"]) if own_count else BATCH_COUNT
    return count, batches.plan(eids, count)


def cohort_plan(splits, group=None):
    """(count, batch -> eids) for cohort members of ``splits`` (and ``group``).

    The whole cohort shares BATCH_COUNT; a group's registration batches count
    its own test members.
    """
    path = checkpoints.cohort_table.get().output.table
    return _cohort_plan(
        path, os.path.getmtime(path), tuple(splits), group, group is not None
    )


def manifests_for(template, eids, count, **wildcards):
    """The manifests of the batches that hold ``eids``."""
    names = sorted({batches.batch_name(eid, count) for eid in eids})
    return [template.format(batch=name, **wildcards) for name in names]


def stage_manifests(template, splits, group=None):
    """Every manifest of a batch rule over cohort members of ``splits`` (and ``group``)."""
    count, plan = cohort_plan(splits, group)
    extra = {} if group is None else {"group": group}
    return [template.format(batch=name, **extra) for name in plan]


def plan_members(splits, per_group=False):
    """The members of a wildcard's batch (and group)."""

    def members(wildcards):
        group = wildcards.group if per_group else None
        return cohort_plan(splits, group)[1][wildcards.batch]

    return members


# Whose training cache is made: val and test are predicted; train is needed to
# train, and for the default reference volume (gradcam.reference not given).
_TRAIN_CACHES = not GIVEN_CHECKPOINT or (
    config["gradcam"]["method"] in REFERENCE_METHODS
    and not config["gradcam"]["reference"]
)
CACHED_SPLITS = ("train", "val", "test") if _TRAIN_CACHES else ("val", "test")
register_members = plan_members(["test"], per_group=True)
WARPED = f"{EXPLAIN}/{{group}}/warped/{{eid}}.nii.gz"
REGISTRATION = f"{EXPLAIN}/{{group}}/registration/{{eid}}.pt"
REGISTRATION_RECORD = f"{EXPLAIN}/{{group}}/registration/{{eid}}.json"


def test_members(group):
    table = cohort_frame()
    rows = table[(table["split"] == "test") & (table["group"] == group)]
    return rows["eid"].tolist()


def active_groups():
    """Groups with test participants: the ones that get maps."""
    table = cohort_frame()
    present = set(table.loc[table["split"] == "test", "group"])
    return [group for group in GROUPS if group in present]


# ---- the explain stage: atlases and per-group inputs -----------------------


def atlas_members(group):
    table = cohort_frame()
    splits = config["atlas"]["splits"]
    rows = table[table["split"].isin(splits) & (table["group"] == group)]
    if rows.empty:
        raise WorkflowError(
            f"group {group} has test participants but nobody in splits {splits} to build "
            f"its atlas: give one in atlas.given or widen atlas.splits"
        )
    return [
        str(e) for e in selection.choose_members(rows, config["atlas"]["n_members"])
    ]


def atlas_reference(group):
    given = config["atlas"]["reference"].get(group)
    if given is not None:
        return str(given)
    table = cohort_frame()
    rows = table[table["eid"].isin(atlas_members(group))]
    return str(selection.choose_reference(rows))


def atlas_path(group):
    """The group's atlas: the user's file, or the last built template."""
    return config["atlas"]["given"].get(group, f"{ATLAS_DIR}/{group}.nii.gz")


def template(group, iteration):
    return f"{ATLAS_DIR}/{group}/iter{iteration}/template.nii.gz"


def channel_files(path):
    """An atlas's or template's files, one per registration channel (registration.channels)."""
    return paths.channel_files(path, config["registration"]["channels"])


def group_files(pattern):
    """One path per test participant of the wildcard's group."""
    return lambda wc: per_participant(pattern, test_members(wc.group), group=wc.group)


def all_test_files(pattern):
    return lambda wc: [
        path
        for group in active_groups()
        for path in per_participant(pattern, test_members(group), group=group)
    ]


def all_batch_manifests(wildcards):
    """Every per-participant batch's manifest: the failure table reads them all."""
    manifests = expand(STITCH_MANIFEST, batch=list(STITCH_BATCHES))
    manifests += stage_manifests(PREPROCESS_MANIFEST, CACHED_SPLITS)
    if BASELINE_ENABLED:
        manifests += stage_manifests(PROJECTION_MANIFEST, PROJECTION_SPLITS)
    manifests += stage_manifests(GRADCAM_MANIFEST, ["test"])
    for group in active_groups():
        manifests += stage_manifests(REGISTER_MANIFEST, ["test"], group)
        manifests += stage_manifests(WARP_MANIFEST, ["test"], group)
    return manifests


def group_map(subset, kind="mean"):
    return f"{EXPLAIN}/{{group}}/maps/{subset}_{kind}.nii.gz"


def explain_targets(wc):
    """Everything the explain stage ends with."""
    groups = active_groups()
    targets = [REGISTRATION_QC, f"{EXPLAIN}/figures/importance_by_group.png"]
    if config["maps"]["example_group"] in groups:
        targets.append(
            f"{EXPLAIN}/figures/examples_{config['maps']['example_group']}.png"
        )
    for group in groups:
        targets += expand(
            f"{EXPLAIN}/{group}/figures/{{name}}.png",
            name=[
                "importance_by_age_band",
                "importance_by_ageing_class",
                "accelerated_vs_decelerated",
            ],
        )
        targets.append(f"{EXPLAIN}/{group}/stats/age_band_lt60_vs_ge70.json")
    if SYNTHETIC:
        targets.append(f"{RESULTS}/{paths.TRUTH_CHECK}")
    return targets


# ---- the 2.5D baseline (workflow/rules/baseline.smk) ----


REFERENCE_VOLUME = f"{EXPLAIN}/reference_volume.npy"


# gradcam.reference group_atlas: each participant's map is drawn against their
# group's atlas in their own body, so gradcam waits for their registration.
ATLAS_REFERENCE = (
    config["gradcam"]["method"] in REFERENCE_METHODS
    and config["gradcam"]["reference"] == given_model.GROUP_ATLAS
)


def gradcam_reference(wildcards):
    """The reference volume (gradcam.reference, else the mean training volume), for the methods
    that attribute against one (group_atlas: gradcam_atlases)."""
    if config["gradcam"]["method"] in REFERENCE_METHODS and not ATLAS_REFERENCE:
        return config["gradcam"]["reference"] or REFERENCE_VOLUME
    return []


def _batch_groups(wildcards):
    """group -> eids of a gradcam batch's members in groups that get maps."""
    groups = (
        cohort_frame().set_index("eid").loc[plan_members(["test"])(wildcards), "group"]
    )
    active = set(active_groups())
    return {
        group: list(eids.index)
        for group, eids in groups.groupby(groups)
        if group in active
    }


def gradcam_registrations(wildcards):
    """With ATLAS_REFERENCE: the registration batches of a gradcam batch's members."""
    if not ATLAS_REFERENCE:
        return []
    return [
        path
        for group, eids in _batch_groups(wildcards).items()
        for path in manifests_for(
            REGISTER_MANIFEST, eids, cohort_plan(["test"], group)[0], group=group
        )
    ]


def gradcam_atlases(wildcards):
    """With ATLAS_REFERENCE: group -> atlas (water) of a gradcam batch's members."""
    if not ATLAS_REFERENCE:
        return {}
    return {group: atlas_path(group) for group in _batch_groups(wildcards)}


PROJECTION = f"{BASELINE}/projections/{{eid}}.npy"  # and {eid}.png, its preview
PROJECTION_SPLITS = tuple(sorted({*config["baseline"]["train_splits"], "val", "test"}))


def projection_paths(*splits):
    return per_participant(PROJECTION, cohort_members(*splits))


def figure9_participants():
    """A few test participants spread over the age range."""
    table = cohort_frame()
    test = table[table["split"] == "test"]
    return selection.choose_members(test, config["baseline"]["figure_participants"])
