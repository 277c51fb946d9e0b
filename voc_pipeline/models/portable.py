"""Saved models that an older Keras can load: each .keras file says which of its options sit at their defaults.

Keras adds options to its classes from version to version (3.15's initializers take `input_axes` and
`output_axes`, its BatchNormalization `renorm`...), and writes every option into a saved model; an older
Keras refuses a model naming an option it does not know. An option left at its default changes nothing, so
an older Keras may drop it, but only the Keras that saved the model knows which values are defaults. So,
after a training saves its model, `record_option_defaults` adds to the .keras file the options of each
class that sit at that Keras's defaults (`OPTION_DEFAULTS_MEMBER`); `artifacts.load_model_file` drops an
option its Keras does not know only when that record says it was at its default, and refuses it otherwise.
"""

from __future__ import annotations

import importlib
import inspect
import json
import zipfile
from pathlib import Path

import keras

from voc_pipeline.artifacts import OPTION_DEFAULTS_MEMBER
from voc_pipeline.files import atomic_path


def class_of(node: dict):
    """The class a serialized Keras object names (a Keras module's, or a registered one), None if not found."""
    registered = node.get("registered_name")
    if isinstance(registered, str) and ">" in registered:
        return keras.saving.get_registered_object(registered)
    module = node.get("module")
    try:
        return getattr(importlib.import_module(module), node["class_name"], None) if module else None
    except ImportError:
        return None


def options_at_defaults(configuration) -> dict[str, dict]:
    """{class name: {option: value}} of every option in a saved model's configuration that equals its class's default
    in this Keras (options without a default, such as a layer's name, are never listed)."""
    found: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, dict):
            config, cls = node.get("config"), None
            if isinstance(config, dict) and isinstance(node.get("class_name"), str):
                cls = class_of(node)
            if cls is not None:
                for name, parameter in inspect.signature(cls.__init__).parameters.items():
                    if parameter.default is not inspect.Parameter.empty and name in config \
                            and json.dumps(config[name]) == json.dumps(parameter.default, default=str):
                        found.setdefault(node["class_name"], {})[name] = config[name]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(configuration)
    return found


def record_option_defaults(path: Path) -> Path:
    """Add to the .keras file at `path` the record of its options at this Keras's defaults (replacing it atomically)."""
    path = Path(path)
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    record = {"keras_version": keras.__version__,
              "defaults": options_at_defaults(json.loads(members["config.json"]))}
    members[OPTION_DEFAULTS_MEMBER] = json.dumps(record, sort_keys=True).encode()
    with atomic_path(path) as temporary, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in members.items():
            target.writestr(name, data)
    return path
