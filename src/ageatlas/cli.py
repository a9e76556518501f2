"""Command line.

`ageatlas where` says where a run's results are and how QC went (with
``--eid``: which batch jobs handled that participant, and how);
`ageatlas install-profile` installs the SLURM profile (profiles/slurm) with
your partition and account, so that `snakemake --profile slurm` finds it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from ageatlas.core import paths


def _status_counts(table_path: Path) -> str:
    import pandas as pd

    table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
    return ", ".join(f"{n} {s}" for s, n in table["status"].value_counts().items())


def where(configfile: str) -> str:
    """A short account of a finished run: result folders, QC counts, report."""
    config = yaml.safe_load(Path(configfile).read_text())
    results = Path(config["results_dir"])
    lines = [f"Results of {configfile} are in {results.resolve()}/"]
    qc_table = results / paths.PARTICIPANT_QC
    if qc_table.exists():
        lines.append(f"  QC table      {qc_table}  ({_status_counts(qc_table)})")
    ingest = results / paths.INGEST
    if ingest.is_dir():
        lines.append(f"  stitched MRI  {ingest}/{{eid}}/{{eid}}_W.nii.gz, _F.nii.gz, _preview.png")
    age = results / paths.AGE
    if (results / paths.TABLE1).exists():
        lines.append(
            f"  Table 1       {results / paths.TABLE1}  (MAE by sex x BMI group; .tsv beside it)"
        )
        lines.append(f"  figures       {age / 'figures'}/")
        lines.append(f"  predictions   {age / 'predictions_corrected.tsv'}")
        lines.append(
            f"  model         {results / paths.AGE_MODEL / 'checkpoint.pt'}  "
            f"(metrics.tsv beside it)"
        )
    gradcam = (results / paths.GRADCAM).parent
    if gradcam.is_dir():
        lines.append(
            f"  Grad-CAM      {gradcam}/{{eid}}.nii.gz  (test participants, stitched space)"
        )
    explain = results / paths.EXPLAIN
    if (results / paths.ATLAS).is_dir():
        lines.append(
            f"  atlases       {results / paths.ATLAS}/{{group}}.nii.gz  (one per sex x BMI group)"
        )
    if (explain / "figures").is_dir():
        lines.append(
            f"  importance    {explain / 'figures'}/importance_by_group.png, examples_*.png"
        )
        lines.append(
            f"  per group     {explain}/{{group}}/maps/ (mean, SD, signed parts, per year),"
            " stats/, figures/"
        )
    registration_qc = results / paths.REGISTRATION_QC
    if registration_qc.exists():
        lines.append(f"  registration  {registration_qc}  ({_status_counts(registration_qc)})")
    if (results / paths.TRUTH_CHECK).exists():
        lines.append(
            f"  truth check   {results / paths.TRUTH_CHECK}  "
            f"(SYNTHETIC: Dice, enrichment in age regions)"
        )
    synthetic = results / paths.SYNTHETIC
    if synthetic.is_dir():
        lines.append(f"  SYNTHETIC cohort (zips, phenotypes, truth)  {synthetic}/")
    logs = Path(config.get("logs_dir", "logs"))
    lines.append(f"  logs          {logs.resolve()}/")
    return "\n".join(lines)


def participant_batches(configfile: str, eid: str) -> str:
    """The batch manifests that list ``eid``, with its status in each: the files to give
    ``--forcerun`` to redo that participant (README, "Partial reruns")."""
    from ageatlas.core.batch_run import read_manifests

    config = yaml.safe_load(Path(configfile).read_text())
    results = Path(config["results_dir"])
    manifests = sorted(results.glob("**/batches/*/*.tsv"))
    rows = [r for r in read_manifests(manifests) if r["eid"] == str(eid)]
    if not rows:
        return f"participant {eid}: in none of the {len(manifests)} batch manifests under {results}"
    lines = [f"participant {eid}:"]
    lines += [f"  {r['manifest']}  {r['status']}  {r['error']}".rstrip() for r in rows]
    return "\n".join(lines)


# The repository's profile (the package is installed from the repository, src layout).
PROFILE_SOURCE = Path(__file__).resolve().parents[2] / "profiles" / "slurm"
PROFILE_DEST = Path("~/.config/snakemake/slurm")


def _python_string(value: str) -> str:
    """A YAML scalar that Snakemake evaluates to exactly ``value``.

    Snakemake evaluates resource values as Python expressions: a bare partition
    named ``all`` or ``max`` would become a built-in function. Quoted, it stays a
    string: ``slurm_partition: "'all'"``.
    """
    if not value or any(c in value for c in "'\"\n\\") or value != value.strip():
        raise ValueError(f"not a usable SLURM name: {value!r}")
    return f"\"'{value}'\""


def install_profile(
    partition: str,
    account: str,
    dest: str | Path = PROFILE_DEST,
    source: str | Path = PROFILE_SOURCE,
    force: bool = False,
) -> Path:
    """Write ``source``/config.yaml to ``dest``/config.yaml with the partition and account set.

    Everything else (comments included) is copied as it is. Refuses to overwrite
    an existing ``dest``/config.yaml unless ``force``. Returns the file written.
    """
    source = Path(source).expanduser()
    source_file = source / "config.yaml" if source.is_dir() else source
    if not source_file.is_file():
        raise FileNotFoundError(f"no SLURM profile at {source_file} (pass --source profiles/slurm)")
    target = Path(dest).expanduser() / "config.yaml"
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite it")
    settings = {
        "slurm_partition": _python_string(partition),
        "slurm_account": _python_string(account),
    }
    lines = source_file.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("default-resources:"))
    except StopIteration:
        raise ValueError(f"{source_file} has no top-level default-resources block") from None
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()),
        len(lines),
    )
    block = lines[start + 1 : end]
    indent = next(
        (len(x) - len(x.lstrip()) for x in block if x.strip() and not x.lstrip().startswith("#")), 2
    )
    for key, value in settings.items():
        # Replace a set or commented-out `key:` line of the block, or add one.
        pattern = re.compile(rf"^\s*#?\s*{key}\s*:")
        hit = next((i for i, line in enumerate(block) if pattern.match(line)), None)
        line = f"{' ' * indent}{key}: {value}"
        if hit is None:
            block.insert(0, line)
        else:
            block[hit] = line
    header = [
        f"# Installed by `ageatlas install-profile` from {source_file}",
        f"# with partition {partition!r} and account {account!r}.",
    ]
    text = "\n".join(header + lines[: start + 1] + block + lines[end:]) + "\n"
    resources = (yaml.safe_load(text) or {}).get("default-resources") or {}
    assert resources.get("slurm_partition") == f"'{partition}'", resources
    assert resources.get("slurm_account") == f"'{account}'", resources
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ageatlas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_where = sub.add_parser("where", help="where a run's results are")
    p_where.add_argument("--configfile", default="config/demo.yaml")
    p_where.add_argument("--eid", help="list the batch jobs that handled this participant")
    p_install = sub.add_parser(
        "install-profile",
        help=(
            "install the SLURM profile with your partition and account "
            "(then: snakemake --profile slurm)"
        ),
    )
    p_install.add_argument(
        "--partition", required=True, help="SLURM partition for every job (sbatch -p)"
    )
    p_install.add_argument(
        "--account", required=True, help="SLURM account for every job (sbatch -A)"
    )
    p_install.add_argument(
        "--dest", default=str(PROFILE_DEST), help="profile folder (default: %(default)s)"
    )
    p_install.add_argument(
        "--source", default=str(PROFILE_SOURCE), help="profile to copy (default: %(default)s)"
    )
    p_install.add_argument("--force", action="store_true", help="overwrite an existing profile")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(
            participant_batches(args.configfile, args.eid) if args.eid else where(args.configfile)
        )
    elif args.command == "install-profile":
        try:
            target = install_profile(
                args.partition, args.account, args.dest, args.source, args.force
            )
        except (FileExistsError, FileNotFoundError, ValueError) as exc:
            parser.exit(1, f"ageatlas install-profile: {exc}\n")
        folder = target.parent
        # snakemake finds a profile by name in ~/.config/snakemake; elsewhere it needs the path.
        name = folder.name if folder.parent == PROFILE_DEST.expanduser().parent else folder
        print(f"Wrote {target}")
        print(
            f"Run from the repository root: "
            f".venv/bin/snakemake --configfile my-config.yaml --profile {name}"
        )


if __name__ == "__main__":
    main()
