"""The ImageNet weight files a profile needs, fetched the way Keras fetches them, as a Kaggle dataset.

`keras.applications` names, locates and checks its weight files itself (the name depends on the backbone,
its width multiplier and input size; some come with a hash). Rather than copying those rules, the plan
builds each backbone of the profile with `weights="imagenet"` while Keras's download function is replaced
by one that only records what it was asked for: the plan is exactly what Keras would download, for the
Keras version installed, without touching the network. Fetching then goes through Keras's own `get_file`
with the same names, addresses and hashes.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from voc_pipeline.config import Config
from voc_pipeline.errors import KernelError
from voc_pipeline.files import atomic_directory, write_json_atomic

MANIFEST = "weights.json"


@dataclass(frozen=True)
class WeightFile:
    """One file Keras downloads: its name, where from, its hash (if Keras checks one) and its cache folder."""

    fname: str
    origin: str
    file_hash: str | None
    cache_subdir: str
    used_by: str


class _Recorded(Exception):
    """Stops a backbone's construction once Keras has said which file it would download."""


@contextlib.contextmanager
def recording_downloads(recorded: list[dict]):
    """Replace Keras's download function by one that records its arguments and stops the caller."""
    try:
        from keras.src.utils import file_utils
    except ImportError as error:  # a Keras that fetches weights elsewhere than this plan knows
        raise KernelError(f"this Keras version downloads weights differently ({error}); attach the weight files by "
                          "hand or use weights=none") from None
    original = file_utils.get_file

    def record(fname=None, origin=None, untar=False, md5_hash=None, file_hash=None, cache_subdir="datasets", **_):
        recorded.append({"fname": fname, "origin": origin, "file_hash": file_hash or md5_hash,
                         "cache_subdir": cache_subdir})
        raise _Recorded

    file_utils.get_file = record
    try:
        yield
    finally:
        file_utils.get_file = original


def backbones_of(config: Config) -> list[tuple[str, str, int, float, bool]]:
    """(used by, backbone, image size, width multiplier, dense) of each head that asks for ImageNet weights."""
    heads = []
    if config.classifier.weights == "imagenet":
        heads.append(("classifier", config.classifier.backbone, config.classifier.image_size,
                      config.classifier.width_multiplier, False))
    if config.segmenter.weights == "imagenet":
        heads.append(("segmenter", config.segmenter.backbone, config.segmenter.image_size,
                      config.segmenter.width_multiplier, True))
    return heads


def plan_weights(config: Config) -> list[WeightFile]:
    """The weight files Keras downloads for the profile's backbones, once each."""
    from voc_pipeline.models.backbones import build_backbone

    plan: dict[str, WeightFile] = {}
    for used_by, backbone, image_size, width_multiplier, dense in backbones_of(config):
        recorded: list[dict] = []
        with recording_downloads(recorded), contextlib.suppress(_Recorded), warnings.catch_warnings():
            # Dense prediction uses the 224 px weights at any size, as Keras warns; that is intended here.
            warnings.filterwarnings("ignore", message=".*will be loaded as the default", category=UserWarning)
            build_backbone(backbone, image_size, "imagenet", width_multiplier, pretrained_size_only=not dense)
        if not recorded:
            import keras

            # The recording patches a private Keras function (keras.src.utils.file_utils.get_file, Keras 3.3 to 3.15);
            # a Keras that fetches weights another way must not yield an empty plan that looks complete.
            raise KernelError(f"Keras {keras.__version__} built the {used_by}'s {backbone} without asking "
                              f"keras.src.utils.file_utils.get_file for its ImageNet weights, so this plan cannot list "
                              f"them; attach the weight files by hand (see the README's three options) or use weights=none")
        for entry in recorded:
            known = plan.get(entry["fname"])
            plan[entry["fname"]] = WeightFile(**entry, used_by=f"{known.used_by}, {used_by}" if known else used_by)
    return list(plan.values())


def keras_home() -> Path:
    """Keras's home folder (honouring KERAS_HOME), where it caches downloaded weights under models/."""
    import keras

    public = getattr(keras.config, "keras_home", None)
    if public is not None:
        return Path(public())
    # Keras 3.13, Kaggle's, has it only here (keras.config.keras_home arrived later).
    from keras.src.backend import config

    return Path(config.keras_home())


def missing_weights(config: Config, home: Path | None = None) -> list[WeightFile]:
    """The planned files that are not in Keras's cache (`home`, default Keras's home) yet."""
    plan = plan_weights(config)
    if not plan:  # nothing to look for: Keras (and TensorFlow) need not be imported to say so
        return []
    home = Path(home or keras_home())
    return [weight for weight in plan if not (home / weight.cache_subdir / weight.fname).is_file()]


def write_weights_dataset(plan: list[WeightFile], output: str | Path, username: str, overwrite: bool = False,
                          cache_dir: Path | None = None) -> Path:
    """Fetch the planned files through Keras's own get_file (with their hashes; `cache_dir` defaults to
    Keras's home) and write them, with a manifest and dataset-metadata.json, as a Kaggle dataset folder."""
    import keras

    if not plan:
        raise KernelError("this profile asks for no ImageNet weights (weights=none): there is nothing to fetch")
    with atomic_directory(output, overwrite=overwrite) as folder:
        for weight in plan:
            try:
                path = keras.utils.get_file(weight.fname, weight.origin, cache_subdir=weight.cache_subdir,
                                            file_hash=weight.file_hash, cache_dir=str(cache_dir) if cache_dir else None)
            except Exception as error:  # Keras raises a bare Exception when a download fails
                raise KernelError(f"could not fetch {weight.fname} from {weight.origin}: {error}; this needs internet "
                                  f"access (run it where Keras can download, then upload the folder)") from None
            shutil.copyfile(path, folder / weight.fname)
        write_json_atomic(folder / MANIFEST, [asdict(weight) for weight in plan])
        write_json_atomic(folder / "dataset-metadata.json", {
            "title": "voc-pipeline Keras ImageNet weights", "id": f"{username}/voc-pipeline-keras-weights",
            "licenses": [{"name": "other"}],
            "description": "No-top ImageNet weights of keras.applications backbones, as Keras downloads them "
                           "(see weights.json for each file's origin).",
        })
    return Path(output)


def install_attached_weights(input_root: str | Path, home: Path | None = None) -> list[Path]:
    """Copy the .h5 weight files of datasets attached under `input_root` (one made by `kernel weights`, or the
    user's own) into Keras's cache (`home`/models, default Keras's home), where keras.applications looks
    before downloading."""
    models = Path(home or keras_home()) / "models"
    installed = []
    for source in sorted(Path(input_root).rglob("*.h5")):
        models.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, models / source.name)
        installed.append(models / source.name)
    return installed
