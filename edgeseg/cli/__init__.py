"""The ``edgeseg`` command line: every argparse parser, each command one call into the library.

Commands import the library inside their function so ``edgeseg --help`` does not pay for torch,
Ray and MLflow imports.
"""
