"""Next template of one group's atlas from its members' registrations."""

import json
import logging

import nibabel as nib

from ageatlas.core import logs, provenance
from ageatlas.core.batch_run import failures
from ageatlas.core.paths import channel_files
from ageatlas.explain.atlas import update_template
from ageatlas.explain.register import load_outcome

logs.to_file(snakemake.log[0])
members, excluded = {}, {}
failed = failures([snakemake.input.members])  # members their batch could not register at all
for eid in snakemake.params.eids:
    if eid in failed:
        excluded[int(eid)] = failed[eid]
        continue
    base = f"{snakemake.params.members}/{eid}"
    record = json.loads(open(f"{base}.json").read())
    if record["status"] != "ok":
        excluded[int(eid)] = "; ".join(record["reasons"])
        continue
    warped = [nib.load(p) for p in channel_files(f"{base}.nii.gz", snakemake.params.channels)]
    members[int(eid)] = (load_outcome(f"{base}.pt"), warped)
group, iteration = snakemake.wildcards.group, snakemake.wildcards.iteration
update = update_template(
    [nib.load(p) for p in snakemake.input.template],
    members,
    excluded,
    description=f"ageatlas {group} template iter{iteration}",
)
for image, out in zip(update.templates, snakemake.output.template):
    nib.save(image, out)
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
