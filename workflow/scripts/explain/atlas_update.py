"""Next template of one group's atlas from its members' registrations."""

import json
import logging

import nibabel as nib

from ageatlas.core import logs, provenance
from ageatlas.explain.atlas import update_template
from ageatlas.explain.maps import eid_of_path
from ageatlas.explain.register import load_outcome

logs.to_file(snakemake.log[0])
members, excluded = {}, {}
for transform, record_path, warped in zip(
    snakemake.input.transforms, snakemake.input.records, snakemake.input.warped
):
    eid = int(eid_of_path(record_path))
    record = json.loads(open(record_path).read())
    if record["status"] != "ok":
        excluded[eid] = "; ".join(record["reasons"])
        continue
    members[eid] = (load_outcome(transform), nib.load(warped))
group, iteration = snakemake.wildcards.group, snakemake.wildcards.iteration
update = update_template(
    nib.load(snakemake.input.template),
    members,
    excluded,
    description=f"ageatlas {group} template iter{iteration}",
)
nib.save(update.template, snakemake.output.template)
summary = {
    "group": group,
    "iteration": int(iteration),
    "n_members": update.n_members,
    "members": sorted(members),
    "excluded": {str(k): v for k, v in excluded.items()},
    "mean_displacement_mm": update.mean_displacement_mm,
}
with open(snakemake.output.record, "w") as out:
    json.dump(summary, out, indent=2)
logging.info("%s", summary)
provenance.record(snakemake)
