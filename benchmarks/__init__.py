"""Benchmarks of fcn_dist against a faithful re-implementation of d2l.ai's FCN pipeline.

``python -m benchmarks.run`` is the one entry point (see ``benchmarks/README.md``);
``benchmarks.d2l_reference`` is the baseline. Not part of the installed package.
"""
