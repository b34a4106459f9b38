"""The ``stagetrace`` command line (``main``; the console script ``stagetrace = stagetrace.cli:main``)."""

from .main import main

__all__ = ["main"]
