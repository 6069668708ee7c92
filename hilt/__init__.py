"""hilt: human-in-the-loop data and fine-tuning platform."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hilt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
