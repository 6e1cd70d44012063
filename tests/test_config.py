"""Config: precedence, round trip, and errors that name the key."""

import dataclasses
import sys
import subprocess
from pathlib import Path

import pytest

from fcn_dist.config import Config, ConfigError, config_reference, load_config, save_config


def _yaml(tmp_path: Path, text: str, name: str = "my_recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = _yaml(tmp_path, "model:\n  arch: fcn8s\noptim:\n  lr: 0.001\n  momentum: 0.5\ndata:\n  crop_size: [256, 384]\n")
    cfg = load_config(path, ["optim.lr=0.02", "train.mixed_precision=bf16", "data.classes=[a,b]"])
    assert cfg.name == "my_recipe"
    assert cfg.model.arch == "fcn8s"            # YAML over default
    assert cfg.model.backbone == "resnet18"     # default kept
    assert cfg.optim.lr == 0.02                 # CLI over YAML
    assert cfg.optim.momentum == 0.5            # YAML kept
    assert cfg.data.crop_size == [256, 384]
    assert cfg.data.classes == ["a", "b"]
    assert cfg.train.mixed_precision == "bf16"
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(_yaml(tmp_path, "train:\n  mixed_precision: no\n", "b.yaml")).train.mixed_precision == "no"
    assert cfg.run_dir() == Path("runs/my_recipe")


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(_yaml(tmp_path, "train:\n  epochs: 3\n"), ["optim.schedule=cosine", "data.scale_range=[0.75,1.5]"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.lrr=0.1"])
    msg = str(err.value)
    assert "optim.lrr" in msg and "lr, momentum" in msg and "weight_decay" in msg

    path = _yaml(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.epoch" in str(err.value) and str(path) in str(err.value) and "max_steps" in str(err.value)

    with pytest.raises(ConfigError, match="unknown config key 'trainer'.*valid top-level keys"):
        load_config(None, ["trainer.x=1"])


def test_bad_type_names_key_expected_type_and_value():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.lr=fast"])
    assert str(err.value) == ("bad value for config key 'optim.lr' in override 'optim.lr=fast': "
                              "expected float, got 'fast'")
    with pytest.raises(ConfigError, match="'train.epochs'.*expected int, got 1.5"):
        load_config(None, ["train.epochs=1.5"])


@pytest.mark.parametrize("override, fragment", [
    ("model.arch=fcn4s", "model.arch='fcn4s' is not one of fcn32s, fcn16s, fcn8s"),
    ("data.crop_size=[16,16]", "data.crop_size"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("optim.lr=-1", "optim.lr=-1.0 must be > 0"),
    ("lr=0.1", "must name section.key"),
    ("optim.lr", "must look like section.key=value"),
])
def test_invalid_values_are_rejected(override, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_config(_yaml(tmp_path, "model: [unclosed\n"))


def test_config_module_does_not_import_torch():
    code = "import sys, fcn_dist.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_field_is_documented_and_readme_reference_is_current():
    ref = config_reference()
    for section in ("model", "data", "optim", "train", "log"):
        for f in dataclasses.fields(getattr(Config(), section)):
            row = next(line for line in ref.splitlines() if line.startswith(f"| `{section}.{f.name}` |"))
            assert not row.endswith("|  |"), f"{section}.{f.name} has no docstring"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert ref in readme, "README.md config reference is stale: paste the output of `fcn-train --print-config-reference`"


@pytest.mark.parametrize("override, key", [
    ("data.crop_size=[320,480", "data.crop_size"),   # malformed list: was a YAML traceback, exit 1
    ("data.crop_size={a:1}", "data.crop_size"),      # a mapping for a list: was a TypeError traceback
    ("data.classes={a:1}", "data.classes"),
    ("data.crop_size=[a,b]", "data.crop_size[0]"),   # was "expected ?"
    ("name=[1]", "name"),                            # was "expected ?"
])
def test_malformed_override_is_one_line_naming_the_key(override, key, capsys):
    from fcn_dist.cli import train_main

    assert train_main([override]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0] and "?" not in lines[0], lines


@pytest.mark.parametrize("text, key", [
    ("model: 5\n", "model"),                         # was "bad value for config key '?' ... expected ?, got None"
    ("model: [1, 2]\n", "model"),
    ("log: true\n", "log"),
    ("data:\n  crop_size: {a: 1}\n", "data.crop_size"),
    ("data:\n  crop_size: [a, b]\n", "data.crop_size[0]"),
    ("name: {a: 1}\n", "name"),
])
def test_wrongly_shaped_yaml_is_one_line_naming_the_key(tmp_path, text, key, capsys):
    from fcn_dist.cli import train_main

    assert train_main(["--config", str(_yaml(tmp_path, text))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0] and "?" not in lines[0] and "my_recipe.yaml" in lines[0], lines


def test_messages_say_what_each_key_expects():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.crop_size=[320,480"])
    assert str(err.value) == ("cannot parse the value of config key 'data.crop_size' in override "
                              "'data.crop_size=[320,480': did not find expected ',' or ']'; write lists as "
                              "data.crop_size=[a,b] and quote values with spaces")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.crop_size=[a,b]"])
    assert "expected int (each element of list[int]), got 'a'" in str(err.value)


def test_an_empty_section_is_the_defaults(tmp_path):
    """`model:` with every key commented out is YAML null: the section's defaults, not an error."""
    assert load_config(_yaml(tmp_path, "model:\ndata:\n  batch_size: 4\n")).model == Config().model


def test_max_image_pixels_defaults_to_pillows_limit_and_must_be_positive():
    assert load_config(None).data.max_image_pixels == 178_956_970
    assert load_config(None, ["data.max_image_pixels=1000"]).data.max_image_pixels == 1000
    with pytest.raises(ConfigError, match="data.max_image_pixels=0 must be > 0"):
        load_config(None, ["data.max_image_pixels=0"])


@pytest.mark.parametrize("args, fragment", [
    (["optim.class_weights=[1,2,3]"], "optim.class_weights has 3 entries but model.num_classes=21"),
    (["model.num_classes=3", "optim.class_weights=[1,2]"], "optim.class_weights has 2 entries but model.num_classes=3"),
    (["--config", "YAML"], "optim.class_weights has 2 entries but model.num_classes=21"),
    (["optim.class_weights=heavy"], "optim.class_weights='heavy' must be none, auto or a list"),
    (["model.num_classes=2", "optim.class_weights=[1,-1]"], "optim.class_weights=[1, -1] must be"),
    (["optim.loss=lovasz"], "optim.loss='lovasz' is not one of ce, dice, ce+dice, focal"),
])
def test_bad_loss_settings_exit_2_with_one_line_naming_the_key(tmp_path, args, fragment, capsys):
    from fcn_dist.cli import train_main

    args = [str(_yaml(tmp_path, "optim:\n  class_weights: [1.0, 2.0]\n")) if a == "YAML" else a for a in args]
    assert train_main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"fcn-train: error: {lines[0].removeprefix('fcn-train: error: ')}"] and fragment in lines[0], lines


def test_class_weights_take_none_auto_or_one_number_per_class(tmp_path):
    assert load_config().optim.class_weights == "none" and load_config().optim.loss == "ce"
    assert load_config(None, ["optim.class_weights=null"]).optim.class_weights == "none"
    assert load_config(None, ["optim.class_weights=auto"]).optim.class_weights == "auto"
    cfg = load_config(None, ["model.num_classes=3", "optim.class_weights=[1,2.5,0]", "optim.loss=ce+dice"])
    assert cfg.optim.class_weights == [1.0, 2.5, 0.0]
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg  # the resolved list loads back unchanged
