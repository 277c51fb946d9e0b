"""`voc-pipeline data download DIR`: the competition's data through the `kaggle` client, checked.

The client's `competitions download -c SLUG -p DIR` saves `DIR/<slug>.zip` (showing its progress bar, and
resuming a partial file it can prove is the same object). Its own `--unzip` goes through
`zipfile.extractall`, which silently strips `../` and absolute prefixes from entry names, so the zip is
opened here instead: an entry that would land outside DIR (or a link) refuses the whole archive before
anything is written. The entries are extracted into a staging folder inside DIR, the folder holding
`train/train_set.csv` is checked as `data check` does (every array loaded and validated), then moved into
place, and a record `DIR/.kaggle-download.json` is written last. A DIR with that record and the layout is
complete and reused; anything else (an interrupted download or extraction) is downloaded again.
"""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from voc_pipeline.errors import DataError, KernelError
from voc_pipeline.files import write_json_atomic

RECORD = ".kaggle-download.json"
STAGING = ".kaggle-extracting"


def unsafe_entry(entry: zipfile.ZipInfo, destination: Path) -> str | None:
    """Why `entry` may not be extracted into `destination` (None when it may)."""
    name = entry.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in path.parts:
        return "a path that climbs out with '..'"
    if stat.S_ISLNK(entry.external_attr >> 16):
        return "a symbolic link"
    target = (destination / path).resolve()
    if not target.is_relative_to(destination.resolve()):
        return "a path outside the folder"
    return None


def extract_safely(archive: Path, destination: Path) -> list[str]:
    """Extract every entry of `archive` under `destination`, after checking that none would leave it."""
    try:
        with zipfile.ZipFile(archive) as opened:
            entries = opened.infolist()
            for entry in entries:
                reason = unsafe_entry(entry, destination)
                if reason:
                    raise KernelError(f"refusing {archive}: its entry {entry.filename!r} is {reason} and would be "
                                      f"written outside {destination}; nothing was extracted (the archive is not "
                                      f"the competition's: delete it and download again)")
            destination.mkdir(parents=True, exist_ok=True)
            for entry in tqdm(entries, desc=f"extracting {archive.name}", unit="file"):
                opened.extract(entry, destination)
            return [entry.filename for entry in entries]
    except zipfile.BadZipFile as error:
        archive.unlink(missing_ok=True)
        raise KernelError(f"{archive} is not a complete zip ({error}): it was deleted; run the download again") from error


def find_layout_root(folder: Path) -> Path:
    """The folder under `folder` (itself, or up to two levels down) holding train/train_set.csv."""
    for depth in ("", "*/", "*/*/"):
        found = sorted(folder.glob(f"{depth}train/train_set.csv"))
        if found:
            return found[0].parent.parent
    raise KernelError(f"the downloaded data in {folder} holds no train/train_set.csv: this competition's data "
                      f"does not have the layout this project reads (see COMPETITION.md)")


def check_layout(root: Path) -> dict:
    """The layout check of `data check`: both splits load and validate. Returns the image counts."""
    from voc_pipeline.data.competition import load_competition_data

    try:
        train, test = load_competition_data(root)
    except DataError as error:
        raise KernelError(f"the downloaded data does not pass the layout check of `data check`: {error}") from error
    return {"train": len(train), "test": len(test)}


def is_complete(directory: Path, competition: str) -> bool:
    """Whether `directory` holds a finished download of `competition` (its record, and the layout files)."""
    record = directory / RECORD
    if not record.exists():
        return False
    try:
        recorded = json.loads(record.read_text())
    except ValueError:
        return False
    return recorded.get("competition") == competition and all(
        (directory / name).exists() for name in ("train/train_set.csv", "test/test_set.csv"))


def download_competition_data(directory: str | Path, competition: str, cli) -> Path:
    """Download, check and unpack `competition`'s data into `directory`; reuse it when already complete."""
    directory = Path(directory)
    if is_complete(directory, competition):
        print(f"{directory} holds {competition}'s data already (complete, checked when it was downloaded): reusing it")
        return directory
    record = directory / RECORD
    if record.exists():
        record.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / f"{competition}.zip"
    cli.run("competitions", "download", "-c", competition, "-p", str(directory), echo=True,
            context={"competition": competition})
    if not archive.exists():
        raise KernelError(f"`kaggle competitions download` left no {archive}: see its output above")
    staging = directory / STAGING
    if staging.exists():
        shutil.rmtree(staging)
    extract_safely(archive, staging)
    root = find_layout_root(staging)
    counts = check_layout(root)
    for child in sorted(root.iterdir()):
        target = directory / child.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        shutil.move(str(child), str(target))
    shutil.rmtree(staging)
    archive.unlink()
    write_json_atomic(record, {"competition": competition, "archive": archive.name, **counts})
    print(f"{competition}: {counts['train']} train and {counts['test']} test images in {directory}, layout checked; "
          f"next: `make train DATA={directory}`")
    return directory
