"""fusion-harness: a benchmark harness that compares audio-visual fusion strategies fairly."""

__version__ = "0.1.0"
