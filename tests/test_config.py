import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import (PRESETS, SECTIONS, ConfigError, ExperimentConfig, apply_overrides, config_from_dict, get_preset,
                    load_config, validate)
from train_vision_mamba import USER_ERRORS, UsageError, prepare


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid_and_round_trips_through_json(name, tmp_path):
    config = get_preset(name)
    path = tmp_path / "c.json"
    config.save(path)
    assert load_config(str(path)) == config


def test_defaults_and_experiment_name():
    config = get_preset("cifar10")
    assert config.experiment_name == "vision_mamba_cifar10"
    # the preset's own values come through; what it leaves out keeps the dataclass default
    assert config.training.lr == PRESETS["cifar10"]["training"]["lr"] and config.data.dataset == "cifar10"
    assert config.training.min_lr == ExperimentConfig().training.min_lr
    assert ExperimentConfig().data.dataset == "digits"


def test_partial_json_files_start_from_the_defaults(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"training": {"lr": 0.01}}))
    config = load_config(str(path))
    assert config.training.lr == 0.01 and config.training.epochs == ExperimentConfig().training.epochs


@pytest.mark.parametrize("values,fragments", [
    ({"training": {"lrr": 1}}, ["unknown setting training.lrr", "lr"]),
    ({"trainer": {}}, ["unknown config section 'trainer'", "model, data, training, logging"]),
    ({"training": {"lr": "fast"}}, ["training.lr", "expected float"]),
    ({"training": {"epochs": 2.5}}, ["training.epochs", "expected int"]),
    ({"training": {"lr": 0}}, ["training.lr must be > 0"]),
    ({"training": {"lr": -1e-3}}, ["training.lr must be > 0"]),
    ({"data": {"batch_size": 0}}, ["data.batch_size must be >= 1"]),
    ({"training": {"scheduler": "linear"}}, ["training.scheduler", "cosine, step, plateau, constant"]),
    ({"training": {"optimizer": "sgd"}}, ["training.optimizer", "adamw, muon"]),
    ({"training": {"muon_lr_scale": 0}}, ["training.muon_lr_scale must be > 0"]),
    ({"model": {"model_size": "huge"}}, ["model.model_size", "tiny, small, base, large"]),
    ({"model": {"block_type": "mamba"}}, ["model.block_type", "hybrid, ssm, attention"]),
    ({"model": {"ssm_conv": "3d"}}, ["model.ssm_conv", "1d, 2d"]),
    ({"model": {"attn_lsa": 1}}, ["model.attn_lsa", "expected bool"]),
    ({"model": {"mlp_conv": "yes"}}, ["model.mlp_conv", "expected bool"]),
    ({"data": {"dataset": "imagenet"}}, ["data.dataset", "cifar10"]),
    ({"data": {"val_fraction": 1.5}}, ["data.val_fraction"]),
    ({"training": {"tta_shift": 5}}, ["training.tta_shift", "0 (off) to 4"]),
    ({"training": {"cudagraphs": "yes"}}, ["training.cudagraphs", "expected bool"]),
    ({"training": {"sam_epochs": -1}}, ["training.sam_epochs must be >= 0"]),
    ({"training": {"sam_rho": 0}}, ["training.sam_rho must be > 0", "training.sam_epochs=0"]),
    ({"data": {"mix_prob": 0}}, ["data.mix_prob must be in (0, 1]", "data.mixup_alpha=0"]),
    ({"data": {"mix_prob": 1.5}}, ["data.mix_prob must be in (0, 1]"]),
    ({"model": {"embed_dim": 30, "num_heads": 4}}, ["divisible"]),
    ({"logging": {"experiment_name": "a/b"}}, ["experiment_name"]),
    ({"training": {"betas": [0.9]}}, ["training.betas"]),
])
def test_bad_values_name_the_key_and_what_is_allowed(values, fragments):
    with pytest.raises(ConfigError) as error:
        config_from_dict(values)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unknown_preset_and_missing_or_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="presets are: digits"):
        load_config("cifar11")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_config(str(bad))


def test_overrides_are_typed_and_validated():
    config = apply_overrides(get_preset("digits"), {"training.lr": 0.5, "model.depth": 2})
    assert config.training.lr == 0.5 and config.model.depth == 2
    with pytest.raises(ConfigError, match="unknown setting model.depht"):
        apply_overrides(config, {"model.depht": 2})


def _cli(*args):
    return prepare(list(args) + ["--output_dir", "/nonexistent-root-for-tests/out"])


def test_command_line_parsing_and_one_line_errors():
    args, config, paths, resume = _cli("--epochs", "3", "--lr", "0.01", "--set", "model.depth=2", "--set", "data.hflip=true")
    assert config.training.epochs == 3 and config.training.lr == 0.01 and config.model.depth == 2 and config.data.hflip is True
    assert paths.logs.endswith(os.path.join("logs", "vision_mamba_digits"))
    for argv, fragment in [(["--epochs", "x"], "invalid int value"), (["--set", "lr=1"], "--set"),
                           (["--set", "training.lr"], "section.key=value"), (["--frobnicate"], "unrecognized")]:
        with pytest.raises((UsageError,) + USER_ERRORS, match=fragment):
            _cli(*argv)


def test_print_config_shows_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    import train_vision_mamba
    out_root = tmp_path / "runs"
    code = train_vision_mamba.main(["--config", "fashion_mnist", "--set", "training.lr=0.002", "--output_dir", str(out_root),
                                    "--print_config"])
    printed = capsys.readouterr().out
    assert code == 0 and not out_root.exists()
    expected = apply_overrides(get_preset("fashion_mnist"), {"training.lr": 0.002, "logging.output_dir": str(out_root)})
    assert json.loads(printed) == json.loads(json.dumps(expected.to_dict()))
    # what it prints is a config file that gives the same config back
    (tmp_path / "printed.json").write_text(printed)
    assert train_vision_mamba.main(["--config", str(tmp_path / "printed.json"), "--print_config"]) == 0
    assert capsys.readouterr().out == printed
    assert train_vision_mamba.main(["--config", "cifar10", "--set", "training.lr=abc", "--print_config"]) == 2
    assert "training.lr" in capsys.readouterr().err


# Fuzzing: any mix of known and unknown keys with values of any JSON type either builds a
# valid config or raises a ConfigError (one line); nothing else escapes.
known_keys = [(section, f.name) for section, cls in SECTIONS.items() for f in __import__("dataclasses").fields(cls)]
json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
                           | st.text(max_size=12), lambda children: st.lists(children, max_size=3), max_leaves=5)
key_strategy = st.sampled_from(known_keys) | st.tuples(st.sampled_from(list(SECTIONS) + ["bogus"]), st.text(max_size=8))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(key_strategy, json_values), max_size=6))
def test_fuzzed_configs_are_valid_or_rejected_with_a_message(entries):
    values = {}
    for (section, key), value in entries:
        values.setdefault(section, {})[key] = value
    try:
        config = config_from_dict(values)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert validate(config) is config


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([f"{s}.{k}" for s, k in known_keys] + ["x.y", "training", "training.nope"]),
                          st.text(max_size=10)), max_size=4))
def test_fuzzed_command_lines_never_crash(pairs):
    argv = []
    for key, value in pairs:
        argv += ["--set", f"{key}={value}"]
    try:
        _cli(*argv)
    except (UsageError,) + USER_ERRORS as e:
        assert str(e) and "\n" not in str(e)
