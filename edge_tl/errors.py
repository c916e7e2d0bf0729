"""The few exceptions the CLI turns into one readable line and exit code 2."""

from __future__ import annotations


class EdgeTLError(Exception):
    """A user-facing error: bad input, bad configuration or a missing artifact (exit code 2)."""


class DataError(EdgeTLError):
    """The image folder cannot be used (no images, too few classes, an empty class)."""


class ConfigError(EdgeTLError):
    """A target profile, pipeline file or option is invalid."""


class ArtifactError(EdgeTLError):
    """An artifact is missing, changed since it was written, or was built for another host."""


class MissingExtraError(EdgeTLError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed; install it with: pip install 'edge-tl[{extra}]'")
        self.package = package
        self.extra = extra


class GateFailed(Exception):
    """A benchmark gate failed (exit code 1)."""


def require(module: str, extra: str):
    """Import an optional module or raise MissingExtraError naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra) from exc
