"""The student's own words in the notebook: `kernel build --notes DIR`.

Each Markdown file of DIR becomes a Markdown cell at the place its name says (`classification.md` after
part 1's evidence, ...). Images a note references by a relative path travel inside the notebook as cell
attachments (`attachment:NAME`), so the handed-in notebook shows them on Kaggle, where no file beside it
exists.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path

from voc_pipeline.errors import KernelError

# The places of the notebook a note can go to, by file name (kaggle/kernel.py marks each with a notes slot).
NOTE_PLACES = ("introduction", "data", "classification", "segmentation", "adversarial", "discussion")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml"}
# ![alt](path "title") and <img src="path">; addresses with a scheme (https:, data:, attachment:) stay as they are.
MARKDOWN_IMAGE = re.compile(r"(!\[[^\]]*\]\()\s*<?([^)\s>]+)>?((?:\s+\"[^\"]*\")?\s*\))")
HTML_IMAGE = re.compile(r"(<img\b[^>]*?\bsrc=[\"'])([^\"']+)([\"'])", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Note:
    """One note as a Markdown cell: its text (image links rewritten) and its attachments."""

    place: str
    source: str
    attachments: dict[str, dict[str, str]] = field(default_factory=dict)

    def cell(self, cell_id: str) -> dict:
        cell = {"cell_type": "markdown", "id": cell_id, "metadata": {"tags": [f"notes:{self.place}"]},
                "source": self.source.splitlines(keepends=True)}
        if self.attachments:
            cell["attachments"] = self.attachments
        return cell


def allowed_names() -> str:
    return ", ".join(f"{place}.md" for place in NOTE_PLACES)


def check_notes_folder(folder: Path) -> list[Path]:
    """The note files of `folder`, or a KernelError for a missing folder or a file name that matches no place."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KernelError(f"--notes {folder}: {'is not a folder' if folder.exists() else 'no such folder'}; give the "
                          f"folder that holds your notes ({allowed_names()})")
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() == ".md")
    unknown = [path.name for path in files if path.stem not in NOTE_PLACES or path.suffix != ".md"]
    if unknown:
        raise KernelError(f"--notes {folder}: {', '.join(unknown)} matches no place in the notebook; the allowed names "
                          f"are {allowed_names()}")
    return files


def attach(note_path: Path, folder: Path, reference: str, attachments: dict) -> str:
    """The attachment name for an image reference of a note, read into `attachments`; a KernelError for a
    missing image, one outside the notes folder, or a file that is not an image."""
    if SCHEME.match(reference) or reference.startswith("#"):
        return reference
    image = (note_path.parent / reference).resolve()
    if not image.is_relative_to(folder.resolve()):
        raise KernelError(f"{note_path} references {reference}, outside the notes folder {folder}: put the image in it")
    if not image.is_file():
        raise KernelError(f"{note_path} references the image {reference}, which does not exist ({image})")
    mime = IMAGE_TYPES.get(image.suffix.lower())
    if mime is None:
        raise KernelError(f"{note_path} references {reference}, not an image the notebook can show "
                          f"({', '.join(IMAGE_TYPES)})")
    name = image.relative_to(folder.resolve()).as_posix().replace("/", "_")
    attachments[name] = {mime: base64.b64encode(image.read_bytes()).decode("ascii")}
    return f"attachment:{name}"


def read_note(path: Path, folder: Path) -> Note:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise KernelError(f"{path} cannot be read as UTF-8 Markdown: {error}") from None
    attachments: dict[str, dict[str, str]] = {}
    text = MARKDOWN_IMAGE.sub(lambda match: match[1] + attach(path, folder, match[2], attachments) + match[3], text)
    text = HTML_IMAGE.sub(lambda match: match[1] + attach(path, folder, match[2], attachments) + match[3], text)
    return Note(path.stem, text.strip("\n"), attachments)


def read_notes(folder: str | Path | None) -> dict[str, Note]:
    """The notes of `folder` by place ({} without a folder).

    Raises:
        KernelError: a missing folder, a file name that matches no place, a referenced image that is missing.
    """
    if folder is None:
        return {}
    folder = Path(folder)
    return {path.stem: read_note(path, folder) for path in check_notes_folder(folder)}
