# Cohort and paths, known when the DAG is built (so -n, --dag, --rulegraph
# and partial targets work before anything has run).
import os

from ageatlas import cohort as cohort_lib
from ageatlas.jobenv import export_source_path
from ageatlas import phenotypes as phenotypes_lib
from ageatlas.layout import zip_name

export_source_path(os.path.join(workflow.basedir, "src"))

RESULTS = config["results_dir"]
LOGS = config["logs_dir"]
BENCHMARKS = config["benchmarks_dir"]
SYNTHETIC = config["cohort"]["source"] == "synthetic"
INSTANCE = config["cohort"]["instance"] if not SYNTHETIC else 2
PHENOTYPE_QC = f"{RESULTS}/qc/phenotypes.tsv"
# A stable path: workflow.source_path() gives a new temporary copy on every
# run, which Snakemake then sees as changed params and reruns everything.
PHENOTYPE_SCHEMA = os.path.join(
    workflow.basedir, "workflow/schemas/phenotypes.schema.yaml"
)

if SYNTHETIC:
    from ageatlas import synth

    ZIP_DIR = f"{RESULTS}/synthetic"
    PHENOTYPES = f"{ZIP_DIR}/phenotypes.csv"
    SYNTHETIC_COHORT = synth.make_cohort(
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


wildcard_constraints:
    eid=r"\d+",


def participant_zip(eid):
    return f"{ZIP_DIR}/{zip_name(eid, INSTANCE)}"


def stitched_dirs():
    return expand(f"{RESULTS}/stitched/{{eid}}", eid=EIDS)


COHORT_TABLE = f"{RESULTS}/cohort/cohort.tsv"


def cohort_members(*splits):
    """eids of the cohort table's given splits, once the cohort checkpoint has run."""
    table = cohort_lib.read_participant_tsv(checkpoints.cohort_table.get().output.table)
    return table.loc[table["split"].isin(splits), "eid"].tolist()


def cache_paths(*splits):
    return expand(f"{RESULTS}/cache/{{eid}}.npy", eid=cohort_members(*splits))
