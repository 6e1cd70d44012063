"""fcn_dist: fully convolutional segmentation networks trained at scale with Accelerate.

The public API is imported lazily, so ``import fcn_dist.config`` does not load torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "fcn_dist.config",
    "Config": "fcn_dist.config",
    "load_config": "fcn_dist.config",
    "build_model": "fcn_dist.model",
    "FCN": "fcn_dist.model",
    "load_model": "fcn_dist.checkpoint",
    "export_model": "fcn_dist.checkpoint",
    "predict_image": "fcn_dist.inference",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fcn_dist' has no attribute {name!r}")
