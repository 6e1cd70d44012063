"""``mixed_precision: auto``: chosen by a probe on CPU, recorded with the run, kept on resume."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from fcn_dist import precision
from fcn_dist.checkpoint import read_metadata
from fcn_dist.data.synthetic import make_synthetic_voc
from fcn_dist.precision import PRECISIONS, resolve_precision

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _env, _overrides, _train  # noqa: E402
from wandb_records import read_records  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_cache():
    precision._cache.clear()
    yield
    precision._cache.clear()


def test_auto_on_cpu_follows_the_probe():
    assert resolve_precision("auto", "cpu", probe=lambda training: (1.0, 2.0)).precision == "no"
    precision._cache.clear()
    faster = resolve_precision("auto", "cpu", probe=lambda training: (1.0, 0.5))
    assert faster.precision == "bf16" and "2.00x" in faster.reason
    precision._cache.clear()
    # a near tie keeps fp32: bf16 must win by MARGIN
    assert resolve_precision("auto", "cpu", probe=lambda training: (1.0, 1.0 / 1.05)).precision == "no"


def test_auto_is_decided_once_per_process_and_kind():
    calls = []

    def probe(training):
        calls.append(training)
        return 1.0, 0.5

    for _ in range(3):
        resolve_precision("auto", "cpu", training=True, probe=probe)
    resolve_precision("auto", "cpu", training=False, probe=probe)
    assert calls == [True, False]


def test_explicit_values_mean_exactly_that():
    for value in ("no", "bf16", "fp16"):
        assert resolve_precision(value, "cpu", probe=lambda training: pytest.fail("probed")).precision == value


@pytest.mark.parametrize("training", [True, False])
def test_the_real_probe_gives_a_valid_precision(training):
    fp32_s, bf16_s = precision.probe_cpu(training, repeats=1)
    assert fp32_s > 0 and bf16_s > 0
    assert resolve_precision("auto", "cpu", training=training).precision in PRECISIONS


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=2, seed=2, max_side=80)


def _wandb_config(run_dir: Path, index: int) -> dict:
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    return {item.key: json.loads(item.value_json) for r in read_records(files[index])
            if r.WhichOneof("record_type") == "config" for item in r.config.update}


@pytest.mark.slow
@pytest.mark.parametrize("probe, chosen", [("faster", "bf16"), ("slower", "no")])
def test_the_choice_is_recorded_and_a_resumed_run_keeps_it(voc_root, tmp_path, probe, chosen):
    over = {"train.mixed_precision": "auto", "train.max_steps": 2, "train.checkpoint_every": 2, "log.wandb": "true"}
    first = _train(_overrides(voc_root, tmp_path, "auto", **over), env=_env(FCN_TEST_PROBE=probe))
    assert f"mixed precision: {chosen} (auto: bf16 " in first.stdout
    run_dir = tmp_path / "auto"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["mixed_precision"] == chosen
    assert json.loads(read_metadata(run_dir / "model_last.safetensors")["fcn_dist.trained_with"]) == {
        "mixed_precision": chosen}
    assert _wandb_config(run_dir, 0)["train.mixed_precision"] == chosen
    # resumed with the opposite probe: the run keeps the precision it started with
    other = {"faster": "slower", "slower": "faster"}[probe]
    resumed = _train(_overrides(voc_root, tmp_path, "auto", **{**over, "train.max_steps": 3}),
                     env=_env(FCN_TEST_PROBE=other))
    assert f"mixed precision: {chosen} (auto: kept from {run_dir / 'config.yaml'})" in resumed.stdout
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["mixed_precision"] == chosen
    assert json.loads(read_metadata(run_dir / "model_last.safetensors")["fcn_dist.trained_with"]) == {
        "mixed_precision": chosen}
