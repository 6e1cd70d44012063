"""The benchmark entry point runs end to end (``--quick``) and writes its JSON and markdown.

No timing is asserted: benchmarks report, they do not pass or fail on a figure.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import _median_run, data_ratios, machine_info, precision_targets, train_ratios, tree_memory

REPO = Path(__file__).resolve().parents[1]

MODEL_ONLY = {"fcn_dist fp32", "fcn_dist fp32 channels_last", "fcn_dist bf16", "fcn_dist bf16 channels_last",
              "d2l fp32", "fcn_dist fp32 channels_last compile", "fcn_dist bf16 channels_last compile"}
END_TO_END = {"fcn_dist fp32", "fcn_dist fp32 channels_last", "fcn_dist bf16", "fcn_dist bf16 channels_last",
              "fcn_dist auto channels_last", "fcn_dist bf16 channels_last compile", "d2l fp32"}


@pytest.mark.slow
def test_quick_run_writes_json_and_markdown_with_every_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--threads", "1", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stem = f"{machine_info()['machine']}-"
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(f.startswith(stem) for f in files), files
    json_name, md_name = files
    assert re.fullmatch(re.escape(stem) + r"\d{4}-\d{2}-\d{2}-quick\.json", json_name)
    assert md_name == json_name.replace(".json", ".md")

    results = json.loads((tmp_path / json_name).read_text())
    assert set(results) == {"environment", "date", "settings", "ceiling", "data", "train", "eval", "elapsed_s",
                            "errors", "complete"}
    assert results["complete"] is True
    assert {"avx2", "avx512f"} & set(results["environment"]["cpu_features"])  # x86-64 CI machines have one
    ceiling = results["ceiling"]
    assert {case["dtype"] for case in ceiling["cases"].values() if case["kind"] == "conv"} == {"fp32", "bf16"}
    assert {"fp32", "bf16"} <= set(ceiling["ceiling_gflop_per_s"]) and min(ceiling["ceiling_gflop_per_s"].values()) > 0
    assert results["errors"] == []
    assert results["settings"]["quick"] is True and results["settings"]["threads"] == 1

    data = results["data"]
    assert "main_rss_anon_mb" in data["baseline"]["memory"]
    cases = {(c["loader"], c["dataset_images"], c["workers"]) for c in data["cases"]}
    loaders = ("fcn_voc", "fcn_arrow", "fcn_arrow_decoded", "fcn_arrow_decoded_d2l_preset",
               "fcn_arrow_decoded_resize_on_device", "d2l")
    assert cases == {(loader, n, w) for loader in loaders for n in (8, 16) for w in (0, 2)}
    for case in data["cases"]:
        assert case["startup_s"] > 0 and case["images_per_s"] > 0
        assert case["batch_dtype"] == ("torch.float32" if case["loader"] == "d2l" else "torch.uint8")
        assert case["memory"]["processes"] == 1 + case["workers"]
        assert {"rss_anon_sum_mb", "pss_sum_mb", "uss_sum_mb", "main_peak_rss_mb"} <= set(case["memory"])
    train_preset = [c for c in data["cases"] if c["loader"] not in ("d2l", "fcn_arrow_decoded_d2l_preset")]
    assert {c["usable_images"] for c in train_preset if c["dataset_images"] == 16} == {16}  # the train preset keeps all
    on_device = [c for c in data["cases"] if c["loader"] == "fcn_arrow_decoded_resize_on_device"]
    assert on_device and all(c["finish_ms_per_image_here"] > 0 for c in on_device)
    assert any(r["pair"].startswith("loader CPU side images/s") for r in data["ratios"])
    d2l_usable = {c["usable_images"] for c in data["cases"] if c["loader"] == "d2l" and c["dataset_images"] == 16}
    assert {c["usable_images"] for c in data["cases"]
            if c["loader"] == "fcn_arrow_decoded_d2l_preset" and c["dataset_images"] == 16} == d2l_usable

    train = results["train"]
    assert {r["name"] for r in train["model_only"]} == MODEL_ONLY
    assert {r["name"] for r in train["end_to_end"]} == END_TO_END
    for row in train["model_only"] + train["end_to_end"]:
        if "compile" in row["name"]:
            assert row["status"] == "skipped" and row["reason"].startswith("--quick")
        elif row["status"] == "ok":
            assert row["images_per_s"] > 0 and len(row["times"]) >= 1
            if row in train["model_only"] and row["impl"] == "fcn":  # its dtype's ceiling bounds it
                assert row["fraction_of_ceiling"] > 0
    ran_e2e = {r["name"] for r in train["end_to_end"] if r["status"] == "ok"}
    assert ran_e2e == {"fcn_dist auto channels_last", "d2l fp32"}
    auto_row = next(r for r in train["end_to_end"] if r["name"] == "fcn_dist auto channels_last")
    assert auto_row["resolved_precision"] in ("no", "bf16") and auto_row["auto_reason"].startswith("auto: ")
    assert auto_row["fraction_of_ceiling"] > 0
    assert any(r["pair"] == "train images/s, end to end: fcn_dist auto channels_last / d2l fp32"
               for r in train["ratios"])

    evals = results["eval"]["cases"]
    assert [c["precision"] for c in evals] == ["no", "bf16", "auto"]
    assert evals[2]["resolved_precision"] in ("no", "bf16")
    for case in evals:  # d2l runs in fp32 only, as d2l does
        for name in ("fcn_dist", "d2l", "d2l_tiled") if case["precision"] == "no" else ("fcn_dist",):
            assert case[name]["images"] == 3 and case[name]["images_per_s"] > 0, name
            assert case[name]["fraction_of_ceiling"] > 0, name
    assert all("d2l" not in case for case in evals[1:])
    assert any(r["pair"] == "eval images/s: fcn_dist bf16 / d2l_tiled fp32" for r in results["eval"]["ratios"])

    markdown = (tmp_path / md_name).read_text()
    for heading in ("## This machine's ceiling", "## Data loaders", "## Training step, model only", "## Training step, end to end",
                    "## Evaluation", "## Ratios", "## Precision targets (issue 18)"):
        assert heading in markdown
    for name in MODEL_ONLY:
        assert f"| {name} |" in markdown


def _case(loader, n, workers, images_per_s, rss):
    return {"loader": loader, "dataset_images": n, "workers": workers, "images_per_s": images_per_s,
            "memory": {"rss_anon_sum_mb": rss}}


def test_data_ratios_pick_the_faster_fcn_loader_at_equal_workers():
    cases = [_case("fcn_voc", 10, 0, 30.0, 100.0), _case("fcn_arrow", 10, 0, 60.0, 120.0),
             _case("d2l", 10, 0, 20.0, 480.0), _case("fcn_voc", 20, 0, 30.0, 100.0),
             _case("fcn_arrow", 20, 0, 40.0, 120.0), _case("d2l", 20, 0, 10.0, 960.0),
             _case("fcn_arrow_decoded_d2l_preset", 10, 0, 100.0, 120.0),  # equal work: never the "best"
             _case("fcn_arrow_decoded_resize_on_device", 10, 0, 240.0, 120.0),  # CPU side only: never the "best"
             {"loader": "d2l", "dataset_images": 20, "workers": 2, "error": "exit code 1"}]
    ratios = {r["pair"]: r["ratio"] for r in data_ratios(cases)}
    assert ratios == {
        "loader images/s, 10 images, 0 workers: fcn_arrow / d2l": 3.0,
        "RssAnon sum, 10 images, 0 workers: d2l / fcn_arrow": 4.0,
        "loader images/s, equal work, 10 images, 0 workers: fcn_arrow_decoded_d2l_preset / d2l": 5.0,
        "loader CPU side images/s, 10 images, 0 workers: fcn_arrow_decoded_resize_on_device / fcn_arrow "
        "(the rest runs on the device)": 4.0,
        "loader images/s, 20 images, 0 workers: fcn_arrow / d2l": 4.0,
        "RssAnon sum, 20 images, 0 workers: d2l / fcn_arrow": 8.0,
        "RssAnon sum growth 10 -> 20 images: fcn_voc, 0 workers": 1.0,
        "RssAnon sum growth 10 -> 20 images: fcn_arrow, 0 workers": 1.0,
        "RssAnon sum growth 10 -> 20 images: d2l, 0 workers": 2.0,
    }


def test_data_rounds_report_medians_and_skip_failed_rounds():
    rounds = [{"images_per_s": 10.0, "startup_s": 1.0, "memory": {"rss_anon_sum_mb": 1.0}}, {"error": "timeout"},
              {"images_per_s": 30.0, "startup_s": 3.0, "memory": {"rss_anon_sum_mb": 2.0}},
              {"images_per_s": 20.0, "startup_s": 5.0, "memory": {"rss_anon_sum_mb": 3.0}}]
    merged = _median_run(rounds)
    assert merged["images_per_s"] == 20.0 and merged["images_per_s_rounds"] == [10.0, 30.0, 20.0]
    assert merged["startup_s"] == 3.0 and merged["memory"] == {"rss_anon_sum_mb": 1.0}
    assert _median_run([{"error": "exit code 1"}]) == {"error": "exit code 1"}


def test_train_ratios_compare_with_d2l_and_model_only():
    model_only = [{"name": "fcn_dist bf16", "impl": "fcn", "status": "ok", "images_per_s": 6.0},
                  {"name": "d2l fp32", "impl": "d2l", "status": "ok", "images_per_s": 2.0},
                  {"name": "fcn_dist fp32 channels_last compile", "impl": "fcn", "status": "skipped"}]
    e2e = [{"name": "fcn_dist bf16", "impl": "fcn", "status": "ok", "images_per_s": 4.5},
           {"name": "d2l fp32", "impl": "d2l", "status": "ok", "images_per_s": 1.5}]
    assert {r["pair"]: r["ratio"] for r in train_ratios(model_only, e2e)} == {
        "train images/s, model only: fcn_dist bf16 / d2l fp32": 3.0,
        "train images/s, end to end: fcn_dist bf16 / d2l fp32": 3.0,
        "end to end / model only: fcn_dist bf16": 0.75,
        "end to end / model only: d2l fp32": 0.75,
    }


def test_precision_targets_compare_auto_with_the_faster_fixed_precision():
    def row(name, precision, images_per_s, fraction, **extra):
        return {"name": name, "impl": "fcn", "status": "ok", "precision": precision, "compile": False,
                "images_per_s": images_per_s, "fraction_of_ceiling": fraction, **extra}

    e2e = [row("fcn_dist fp32 channels_last", "no", 4.0, 0.5), row("fcn_dist bf16 channels_last", "bf16", 6.0, 0.2),
           row("fcn_dist auto channels_last", "auto", 5.9, 0.2, resolved_precision="bf16"),
           {"name": "d2l fp32", "impl": "d2l", "status": "ok", "precision": "no", "images_per_s": 2.0}]
    evals = [{"precision": "no", "fcn_dist": {"images_per_s": 10.0}},
             {"precision": "bf16", "fcn_dist": {"images_per_s": 8.0}},
             {"precision": "auto", "resolved_precision": "bf16", "fcn_dist": {"images_per_s": 8.1}}]
    found = {t["target"]: (round(t["measured"], 4), t["met"])
             for t in precision_targets({"train": {"end_to_end": e2e}, "eval": {"cases": evals}})}
    assert found == {
        "train end to end: auto / fastest fixed variant (fcn_dist bf16 channels_last)": (0.9833, True),
        "train end to end: fastest variant (fcn_dist bf16 channels_last) / its dtype's ceiling": (0.2, False),
        "eval: auto / faster precision (fp32)": (0.81, False),  # auto chose bf16 where fp32 was faster
    }


def test_tree_memory_counts_this_process():
    memory = tree_memory(os.getpid())
    assert memory["processes"] >= 1
    assert 0 < memory["uss_sum_mb"] <= memory["pss_sum_mb"] + 1e-6
    assert 0 < memory["main_rss_anon_mb"] <= memory["rss_anon_sum_mb"]
    assert memory["main_rss_anon_mb"] <= memory["main_peak_rss_mb"]
