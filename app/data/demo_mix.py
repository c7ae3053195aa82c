"""Derive the demo city's 311 complaint mix once from real NYC 311 rows and commit the table.

Run by hand (``python -m app.data.demo_mix ../shared/data/events/nyc``); the app itself only reads
the committed ``demo_tables/nyc311_mix.csv``, so nothing touches ``../shared`` at run time.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import polars as pl

__all__ = ["CRIME_PATH", "MIX_PATH", "derive_mix", "profile_of"]

TABLES = Path(__file__).with_name("demo_tables")
MIX_PATH = TABLES / "nyc311_mix.csv"
CRIME_PATH = TABLES / "nypd_offences.csv"

# Which daily rhythm a complaint type follows (the sample windows are all at night, so the
# rhythm cannot be learnt from them; these are the well-known 311 patterns).
_PROFILES = [
    ("night", r"noise|fireworks|drinking|party"),
    ("evening", r"parking|driveway|vehicle|taxi|hire"),
    ("morning", r"heat|hot water|plumbing|water leak|paint|door|electric|elevator|appliance|unsanitary|general|safety"),
]

# Header styles of the portal CSV export ("Complaint Type") and the SODA API ("complaint_type").
_COLUMNS = {"Complaint Type": "complaint_type", "Descriptor": "descriptor", "Agency": "agency"}


def profile_of(complaint_type: str) -> str:
    """Daily-rhythm profile name for a complaint type (``day`` unless a pattern matches)."""
    for name, pattern in _PROFILES:
        if re.search(pattern, complaint_type, flags=re.IGNORECASE):
            return name
    return "day"


def derive_mix(csv_paths: list[Path], min_rows: int = 2) -> pl.DataFrame:
    """Share of each (complaint type, descriptor) over the given 311 CSVs, types seen ``>= min_rows``."""
    frames = []
    for path in csv_paths:
        df = pl.read_csv(path, infer_schema=False)
        df = df.rename({k: v for k, v in _COLUMNS.items() if k in df.columns})
        frames.append(df.select("complaint_type", "descriptor", "agency"))
    rows = pl.concat(frames).with_columns(pl.col("descriptor").fill_null("Unspecified"))
    keep = rows.group_by("complaint_type").len().filter(pl.col("len") >= min_rows)["complaint_type"]
    mix = (
        rows.filter(pl.col("complaint_type").is_in(keep.implode()))
        .group_by("complaint_type", "descriptor")
        .agg(pl.len().alias("rows"), pl.col("agency").mode().first())
        .with_columns((pl.col("rows") / pl.col("rows").sum()).round(6).alias("share"))
        .with_columns(pl.col("complaint_type").map_elements(profile_of, return_dtype=pl.String).alias("profile"))
        .sort(["rows", "complaint_type", "descriptor"], descending=[True, False, False])
    )
    return mix.select("complaint_type", "descriptor", "agency", "profile", "rows", "share")


def main() -> None:
    """CLI: derive the mix from a folder of real 311 CSV exports and write the committed table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path, help="folder with NYC 311 *.csv.gz exports")
    args = parser.parse_args()
    mix = derive_mix(sorted(args.folder.glob("nyc_311_*.csv.gz")))
    mix.write_csv(MIX_PATH)
    print(f"wrote {MIX_PATH}: {mix['complaint_type'].n_unique()} types, {len(mix)} descriptors")


if __name__ == "__main__":
    main()
