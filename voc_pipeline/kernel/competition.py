"""This year's competition: given with --competition, or found among those the user entered on Kaggle.

The course repeats every year under a new slug (`kul-h02a5a-computer-vision-ga2-2022`,
`kul-computer-vision-ga-2-2025`, `kul-computer-vision-ga-2-2026`, ...; the same data layout). There is no
default year: without --competition, `kaggle competitions list --group entered --csv` lists those the user
entered (in kaggle 2.2.5 `entered` covers every kind of competition; its `ref` column is the competition's
URL, whose last path segment is the slug), and the one KU Leuven computer vision group assignment 2 among
them is taken. None or several is an error that lists what was found and names the flag to choose.
"""

from __future__ import annotations

import csv
import io
import re

from voc_pipeline.errors import KernelError

# "kul-", anything, "computer-vision", anything, then group assignment 2: "ga2" or "ga-2", and a year or
# other suffix after a dash (so "ga-1-..." and "ga-20..." do not match).
ASSIGNMENT_2 = re.compile(r"^kul-(?:[a-z0-9]+-)*computer-vision-(?:[a-z0-9]+-)*ga-?2(?:-[a-z0-9]+)*$")
MAX_PAGES = 20


def slug_of(ref: str) -> str:
    """The slug in a competition's ref: the last path segment of its URL (or the ref itself)."""
    return ref.strip().rstrip("/").rsplit("/", 1)[-1]


def is_assignment_2(slug: str) -> bool:
    """Whether `slug` is a KU Leuven computer vision group assignment 2 competition (any year)."""
    return bool(ASSIGNMENT_2.match(slug))


def entered_competitions(cli) -> list[str]:
    """Slugs of the competitions the user entered, through every page the client reports."""
    slugs, token = [], None
    for _ in range(MAX_PAGES):
        arguments = ["competitions", "list", "--group", "entered", "--csv"]
        output = cli.run(*arguments, *(["--page-token", token] if token else [])).stdout
        token = next((line.split("=", 1)[1].strip() for line in output.splitlines()
                      if line.startswith("Next Page Token =")), None)
        table = "\n".join(line for line in output.splitlines() if "," in line and not line.startswith("Next Page"))
        slugs += [slug_of(row["ref"]) for row in csv.DictReader(io.StringIO(table)) if row.get("ref")]
        if not token:
            break
    return list(dict.fromkeys(slugs))


def choose_competition(entered: list[str]) -> str:
    """The one assignment 2 competition among `entered`, or an error listing what was found."""
    fitting = [slug for slug in entered if is_assignment_2(slug)]
    if len(fitting) == 1:
        return fitting[0]
    found = ", ".join(entered) if entered else "none"
    if not fitting:
        raise KernelError(f"none of the competitions you entered on Kaggle is a KU Leuven computer vision group "
                          f"assignment 2 (entered: {found}): join this year's on kaggle.com, or choose one with "
                          f"--competition SLUG (make ... COMPETITION=SLUG)")
    raise KernelError(f"you entered several KU Leuven computer vision group assignment 2 competitions "
                      f"({', '.join(fitting)}): choose one with --competition SLUG (make ... COMPETITION=SLUG)")


def resolve_competition(competition: str | None, cli=None) -> str:
    """`competition` when given, else the one found among the user's entered competitions (through `cli`,
    by default the checked `kaggle` CLI); prints where the slug came from."""
    if competition:
        return competition
    if cli is None:
        from voc_pipeline.kernel.client import KaggleCli

        cli = KaggleCli.ready()
    chosen = choose_competition(entered_competitions(cli))
    print(f"competition: {chosen} (the assignment 2 competition you entered; --competition SLUG chooses another)")
    return chosen
