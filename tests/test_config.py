import pytest

from voc_pipeline.config import (
    Config,
    ConfigError,
    apply_overrides,
    available_profiles,
    build_config,
    config_to_toml,
    load_profile,
    parse_assignment,
)


def test_defaults_are_the_baseline():
    config = build_config()
    assert config == Config()
    assert config.run_dir.as_posix() == "runs/default"


def test_shipped_profiles_load_and_override():
    """Every shipped profile builds, and so lies inside every declared range and choice."""
    assert {"smoke", "cpu", "kaggle"} <= set(available_profiles())
    for name in available_profiles():
        build_config(name)
    assert build_config("smoke").data.validation_fraction == 0.25
    scratch = build_config("cpu-scratch")
    assert (scratch.classifier.weights, scratch.segmenter.weights) == ("none", "none"), "cpu-scratch must need no download"


def test_set_comes_after_the_profile_and_reads_toml_values():
    config = build_config("smoke", ["data.validation_fraction=0.3", "seed=7", "run_name=trial", "data.root=some/path"])
    assert config.data.validation_fraction == 0.3 and config.seed == 7
    assert config.run_name == "trial" and config.data.root == "some/path"


def test_ints_are_accepted_for_floats():
    config = apply_overrides(Config(), {"data": {"validation_fraction": 0.5}})
    assert config.data.validation_fraction == 0.5
    profile_with_int = apply_overrides(Config(), {"data": {"validation_fraction": 0}})
    assert isinstance(profile_with_int.data.validation_fraction, float)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("data.unknown=1", "unknown configuration key 'data.unknown'"),
        ("nonsense=1", "unknown configuration key 'nonsense'"),
        ("seed=1.5", "seed: expected int"),
        ("seed=true", "seed: expected int"),
        ("data.num_folds=five", "data.num_folds: expected int"),
        ("data=3", "data: is a section"),
        ("data.validation_fraction=1.5", r"data.validation_fraction = 1.5, outside its range \(0, 1\)"),
        ("data.num_folds=1", r"data.num_folds = 1, outside its range \[2, 100\]"),
        ("run_name=a/b", "plain folder name"),
        ("segmenter.output_stride=0", "segmenter.output_stride = 0 is not one of: 8, 16"),
        ("seed=-1", r"seed = -1, outside its range \[0, 4294967295\]"),
        ("classifier.head_epochs=-3", r"classifier.head_epochs = -3, outside its range \[0, 100000\]"),
        ("inference.batch_size=0", r"inference.batch_size = 0, outside its range \[1, 4096\]"),
        ("inference.segmenter_scales=[0.75, 1.25]", "inference.segmenter_scales must include 1.0"),
        ("classifier.head_learning_rate=0", r"classifier.head_learning_rate = 0.0, outside its range \(0, 10\]"),
        ("segmenter.scale_range=[0.0, 1.0]", r"segmenter.scale_range = \[0.0, 1.0\] holds 0.0, outside its range \(0, 8\]"),
        ("joint.area_grid=[0.1, 2]", r"joint.area_grid = \[0.1, 2.0\] holds 2.0"),
        ("thresholds.grid_step=0.5", r"thresholds.grid_step = 0.5, outside its range \(0, 0.5\)"),
        ("mixed_precision=maybe", "mixed_precision = 'maybe' is not one of: auto, on, off"),
        ("classifier.loss=hinge", "classifier.loss = 'hinge' is not one of: bce, focal, asymmetric"),
        ("classifier.backbone=mobilenetv2", "classifier.backbone = 'mobilenetv2' is not one of: mobilenet_v2, mobilenet, "
                                            "vgg16, resnet50v2, efficientnetv2_s, convnext_tiny, convnext_small, "
                                            "convnext_base, simple_cnn, dinov2_small, dinov2_base$"),
        ("segmenter.backbone=vgg16", "segmenter.backbone = 'vgg16' is not one of: mobilenet_v2, mobilenet, resnet50v2, "
                                     "efficientnetv2_s, convnext_tiny, convnext_small, convnext_base, dinov2_small, "
                                     "dinov2_base, segformer_b0, segformer_b1, segformer_b2, segformer_b3, segformer_b4, "
                                     "segformer_b5$"),
        ("segmenter.image_size=100", "not divisible by segmenter.output_stride 16"),
        ("novalue", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(assignment, message):
    with pytest.raises(ConfigError, match=message):
        build_config(assignments=[assignment])


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown profile .gpu-huge.; available: cpu, cpu-foundation, cpu-scratch, kaggle, kaggle-foundation, kaggle-strong, smoke"):
        load_profile("gpu-huge")


def test_profile_file_with_unknown_key_is_refused(tmp_path):
    profile = tmp_path / "mine.toml"
    profile.write_text("[data]\nvalidation_fractoin = 0.1\n")
    with pytest.raises(ConfigError, match="data.validation_fractoin"):
        build_config(str(profile))


def test_saved_toml_reads_back_to_the_same_config(tmp_path):
    config = build_config("kaggle", ["seed=11", 'data.root="/kaggle/input/x"'])
    saved = tmp_path / "config.toml"
    saved.write_text(config_to_toml(config))
    assert build_config(str(saved)) == config


def test_parse_assignment_nests_keys():
    assert parse_assignment("a.b.c=2") == {"a": {"b": {"c": 2}}}
    assert parse_assignment("name=mobilenet_v2") == {"name": "mobilenet_v2"}
    assert parse_assignment("sizes=[1, 2]") == {"sizes": [1, 2]}


def numeric_fields(section, prefix=""):
    """(key, field) of every int, float or tuple-of-numbers field, recursively."""
    import dataclasses

    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            yield from numeric_fields(value, f"{prefix}{item.name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) or (
                isinstance(value, tuple) and value and all(isinstance(number, (int, float)) for number in value)):
            yield f"{prefix}{item.name}", item


def test_every_numeric_field_declares_its_range():
    fields = dict(numeric_fields(Config()))
    assert len(fields) > 40
    undeclared = [key for key, item in fields.items() if "range" not in item.metadata and "choices" not in item.metadata]
    assert undeclared == []


def test_no_training_epoch_at_all_is_refused():
    with pytest.raises(ConfigError, match=r"segmenter.head_epochs \+ segmenter.finetune_epochs must be at least 1"):
        build_config(assignments=["segmenter.head_epochs=0", "segmenter.finetune_epochs=0"])


def test_a_backbone_segments_and_classifies_exactly_when_the_table_gives_it_that_head():
    """The configuration refuses a head its backbone's row does not carry: DeepLabV3+ without the taps it reads, a
    classifier on a segmentation-only encoder (SegFormer)."""
    from voc_pipeline.backbone_table import TABLE

    for row in TABLE:
        weights = "none" if row.from_keras_hub else "imagenet"
        size = row.size_multiple * 4 if row.fixed_size else 64
        for head, carries in (("segmenter", row.segmenter_head == "deeplab" and {4, 8, 16} <= set(row.taps)
                               or row.segmenter_head in ("tokens", "segformer")),
                              ("classifier", row.classifier_head is not None)):
            assignments = [f"{head}.backbone={row.name}", f"{head}.weights={weights}", f"{head}.image_size={size}"]
            if carries:
                assert getattr(build_config(assignments=assignments), head).backbone == row.name
            else:
                with pytest.raises(ConfigError, match=rf"{head}.backbone = '{row.name}' is not one of"):
                    build_config(assignments=assignments)


def test_both_heads_share_one_training_schedule_with_their_own_defaults():
    import dataclasses

    from voc_pipeline.config import ClassifierConfig, SegmenterConfig, TrainingSchedule

    schedule = {item.name: item for item in dataclasses.fields(TrainingSchedule)}
    for section in (ClassifierConfig, SegmenterConfig):
        fields = {item.name: item for item in dataclasses.fields(section)}
        assert set(schedule) <= set(fields)
        for name, item in schedule.items():
            assert fields[name].metadata == item.metadata, f"{section.__name__}.{name} must keep the schedule's range"
    assert (Config().classifier.batch_size, Config().segmenter.batch_size) == (32, 8)
    with pytest.raises(ConfigError, match=r"segmenter.batch_size = 0, outside its range \[1, 4096\]"):
        build_config(assignments=["segmenter.batch_size=0"])


def test_a_config_toml_written_before_the_schedule_was_shared_still_loads(tmp_path):
    """TOML keys stayed flat: a run folder's config.toml from before reads back to the same values."""
    old = tmp_path / "config.toml"
    old.write_text("[classifier]\nbackbone = \"mobilenet_v2\"\nhead_epochs = 2\nfinetune_learning_rate = 5e-05\n"
                   "[segmenter]\npatience = 3\nweights = \"none\"\n")
    config = build_config(str(old))
    assert (config.classifier.head_epochs, config.classifier.finetune_learning_rate) == (2, 5e-05)
    assert (config.segmenter.patience, config.segmenter.weights, config.segmenter.batch_size) == (3, "none", 8)
