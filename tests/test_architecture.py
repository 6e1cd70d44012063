"""The package's boundaries (docs/DESIGN.md, "Boundaries"), read from the source with ``ast``.

- Model, data, transforms, metrics, losses and the training step are plain PyTorch: they import
  nothing about processes, signals, distributed runs or tracking.
- Metrics, optim, inference and the model never import ``fcn_dist.data``.
- ``fcn_dist.config``, ``labels``, ``datafiles``, ``tracking`` and ``compare`` import no torch at module
  level (launch scripts, ``--help`` and ``fcn-compare`` use them).
- ``images``, ``metadata`` and ``runtime`` import no torch anywhere, and ``predict`` none at module level:
  ``fcn-predict --onnx`` runs on them without torch.
- ``fcn-*`` ``--help`` and config errors return without importing torch (checked by running them).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fcn_dist"

PROCESS_MODULES = {"signal", "atexit", "multiprocessing", "torch.distributed", "accelerate", "wandb"}
PLAIN = ["model", "data", "data/transforms", "data/voc", "data/hub", "data/synthetic", "data/check", "data/folder",
         "data/stats", "metrics", "optim", "losses", "precision", "engine", "inference", "labels", "files", "datafiles",
         "folderfiles", "images", "metadata", "runtime"]
NO_DATA = ["metrics", "optim", "losses", "inference", "model", "labels"]
NO_TORCH = ["config", "labels", "files", "process", "cli", "datafiles", "folderfiles", "tracking", "compare"]
NEVER_TORCH = ["images", "metadata", "runtime"]
"""No torch at any depth (numpy is fine): the ONNX prediction path."""
NO_TORCH_AT_IMPORT = ["predict"]
"""No torch at module level (numpy is fine): its torch backend imports torch when it runs."""
TORCH = {"torch", "torchvision"}


def _module_file(name: str) -> Path:
    path = PACKAGE / f"{name}.py"
    return path if path.exists() else PACKAGE / name / "__init__.py"


def imports(path: Path, top_level: bool = False) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth (functions included), or with
    ``top_level`` only at module level."""
    package = ["fcn_dist", *path.relative_to(PACKAGE).parent.parts]
    names: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in (tree.body if top_level else ast.walk(tree)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import data`
    return names


def _hits(names: set[str], forbidden: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def forbidden_edges() -> list[str]:
    """Every import that breaks a boundary, as 'module -> import'."""
    edges = []
    for name in PLAIN:
        edges += [f"{name} -> {hit}" for hit in _hits(imports(_module_file(name)), PROCESS_MODULES)]
    for name in NO_DATA:
        edges += [f"{name} -> {hit}" for hit in _hits(imports(_module_file(name)), {"fcn_dist.data"})]
    for name in NO_TORCH:
        top_level = set()
        tree = ast.parse(_module_file(name).read_text())
        for node in tree.body:  # module level only: a function may import torch when it runs
            if isinstance(node, ast.Import):
                top_level.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                top_level.add(node.module)
        edges += [f"{name} -> {hit}" for hit in _hits(top_level, {"torch", "torchvision", "numpy"})]
    for name in NEVER_TORCH:
        edges += [f"{name} -> {hit}" for hit in _hits(imports(_module_file(name)), TORCH | {"fcn_dist.model",
                  "fcn_dist.checkpoint", "fcn_dist.inference", "fcn_dist.data"})]
    for name in NO_TORCH_AT_IMPORT:
        top_level = _top_level_imports(_module_file(name))
        edges += [f"{name} -> {hit}" for hit in _hits(top_level, TORCH | {"fcn_dist.model", "fcn_dist.checkpoint",
                                                                          "fcn_dist.inference", "fcn_dist.data"})]
    return edges


def _top_level_imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports at module level (not inside functions)."""
    return imports(path, top_level=True)


def test_no_forbidden_import_edges():
    assert forbidden_edges() == []


def test_the_check_sees_an_added_forbidden_import(tmp_path, monkeypatch):
    """The checker itself: a copy of the package with one bad import in metrics.py fails."""
    import shutil

    copy = tmp_path / "fcn_dist"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    metrics = copy / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _bad():\n    import torch.distributed as dist\n"
                       "    from .data import voc\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    runtime = copy / "runtime.py"
    runtime.write_text(runtime.read_text() + "\n\ndef _bad():\n    import torch\n")
    predict = copy / "predict.py"
    predict.write_text(predict.read_text().replace("import numpy as np\n", "import numpy as np\nimport torch\n", 1))
    assert forbidden_edges() == ["metrics -> torch.distributed", "metrics -> fcn_dist.data",
                                 "metrics -> fcn_dist.data.voc", "runtime -> torch", "predict -> torch"]


def test_imports_resolve_relative_names():
    names = imports(PACKAGE / "data" / "voc.py")
    assert "fcn_dist.labels" in names and "fcn_dist.model" in names


COMMANDS = {
    "fcn-train": ["--help"],
    "fcn-train ": ["--print-config-reference"],
    "fcn-train  ": ["optim.lr=oops"],
    "fcn-eval": ["--help"],
    "fcn-predict": ["--help"],
    "fcn-export": ["--help"],
    "fcn-data": ["--help"],
    "fcn-data ": ["check", "--help"],
    "fcn-data  ": ["stats", "--help"],
    "fcn-compare": ["--help"],
}
ENTRY = {"fcn-train": "train_main", "fcn-eval": "eval_main", "fcn-predict": "predict_main", "fcn-export": "export_main",
         "fcn-data": "data_main", "fcn-compare": "compare_main"}


@pytest.mark.parametrize("command, args", list(COMMANDS.items()), ids=lambda v: " ".join(v) if isinstance(v, list) else v.strip())
def test_help_and_config_errors_import_no_torch(command, args):
    """What the console scripts run (setup.cfg's entry points), checked in a fresh interpreter."""
    code = (f"import sys\nfrom fcn_dist.cli import {ENTRY[command.strip()]} as main\n"
            "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as err:\n    code = err.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    expected = 2 if "optim.lr=oops" in args else 0
    assert proc.returncode == expected, proc.stderr
    if expected == 2:
        assert proc.stderr.strip().splitlines() == [
            "fcn-train: error: bad value for config key 'optim.lr' in override 'optim.lr=oops': expected float, "
            "got 'oops'"]
    else:
        assert proc.stdout.strip()


def test_console_scripts_are_the_torch_free_entry_points():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(PACKAGE.parent / "setup.cfg")
    scripts = dict(line.split(" = ") for line in setup["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts == {name: f"fcn_dist.cli:{func}" for name, func in ENTRY.items()}
