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
    assert {"smoke", "cpu", "kaggle"} <= set(available_profiles())
    for name in available_profiles():
        build_config(name)
    assert build_config("smoke").data.validation_fraction == 0.25


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
        ("data.validation_fraction=1.5", "between 0 and 1"),
        ("data.num_folds=1", "at least 2"),
        ("run_name=a/b", "plain folder name"),
        ("novalue", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(assignment, message):
    with pytest.raises(ConfigError, match=message):
        build_config(assignments=[assignment])


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown profile 'gpu-huge'; available: cpu, kaggle, smoke"):
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
