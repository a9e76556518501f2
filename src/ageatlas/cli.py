"""Command line: `ageatlas where` says where a run's results are and how QC went."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def where(configfile: str) -> str:
    """A short account of a finished run: result folders, QC counts, report."""
    config = yaml.safe_load(Path(configfile).read_text())
    results = Path(config["results_dir"])
    lines = [f"Results of {configfile} are in {results.resolve()}/"]
    qc_table = results / "qc" / "participants.tsv"
    if qc_table.exists():
        import pandas as pd

        table = pd.read_csv(qc_table, sep="\t", dtype=str, keep_default_na=False)
        counts = ", ".join(f"{n} {s}" for s, n in table["status"].value_counts().items())
        lines.append(f"  QC table      {qc_table}  ({counts})")
    stitched = results / "stitched"
    if stitched.is_dir():
        lines.append(f"  stitched MRI  {stitched}/{{eid}}/{{eid}}_W.nii.gz, _F.nii.gz, _preview.png")
    table1 = results / "age" / "table1.md"
    if table1.exists():
        lines.append(f"  Table 1       {table1}  (MAE by sex x BMI group; .tsv beside it)")
        lines.append(f"  figures       {results / 'age' / 'figures'}/")
        lines.append(f"  predictions   {results / 'age' / 'predictions_corrected.tsv'}")
        lines.append(f"  model         {results / 'model' / 'checkpoint.pt'}  (metrics.tsv beside it)")
    if (results / "gradcam").is_dir():
        lines.append(f"  Grad-CAM      {results / 'gradcam'}/{{eid}}.nii.gz  (test participants, stitched space)")
    explain = results / "explain"
    if (results / "atlas").is_dir():
        lines.append(f"  atlases       {results / 'atlas'}/{{group}}.nii.gz  (one per sex x BMI group)")
    if (explain / "figures").is_dir():
        lines.append(f"  importance    {explain / 'figures'}/importance_by_group.png, examples_*.png")
        lines.append(f"  per group     {explain}/{{group}}/maps/ (mean, SD per subset), stats/, figures/")
    registration_qc = results / "qc" / "registration.tsv"
    if registration_qc.exists():
        import pandas as pd

        table = pd.read_csv(registration_qc, sep="\t", dtype=str, keep_default_na=False)
        counts = ", ".join(f"{n} {s}" for s, n in table["status"].value_counts().items())
        lines.append(f"  registration  {registration_qc}  ({counts})")
    if (explain / "truth_check.tsv").exists():
        lines.append(f"  truth check   {explain / 'truth_check.tsv'}  (SYNTHETIC: Dice, enrichment in age regions)")
    synthetic = results / "synthetic"
    if synthetic.is_dir():
        lines.append(f"  SYNTHETIC cohort (zips, phenotypes, truth)  {synthetic}/")
    logs = Path(config.get("logs_dir", "logs"))
    lines.append(f"  logs          {logs.resolve()}/")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ageatlas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_where = sub.add_parser("where", help="where a run's results are")
    p_where.add_argument("--configfile", default="config/demo.yaml")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(where(args.configfile))


if __name__ == "__main__":
    main()
