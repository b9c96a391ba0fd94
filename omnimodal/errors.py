"""Exceptions users see. Every message names the user's thing (file:line, item, plugin, option)."""

from __future__ import annotations


class OmnimodalError(Exception):
    """Base class of all errors raised on purpose by omnimodal."""


class PluginError(OmnimodalError):
    """A plugin is broken, incompatible, disabled, missing or in conflict with another."""


class ConfigError(OmnimodalError):
    """A run configuration names something that does not exist or has a bad value."""


class DataError(OmnimodalError):
    """A data record or media item is malformed; the message names file:line or the item."""


class MediaError(DataError):
    """A media item cannot be loaded or preprocessed (corrupt, empty, wrong layout...)."""


class SpliceError(OmnimodalError):
    """Placeholder tokens and media items (or their pseudo-tokens) do not line up."""


class EvaluationError(OmnimodalError):
    """Training finished and the model is saved, but evaluating it failed."""


class NonFiniteLossError(OmnimodalError):
    """A training batch gave a NaN or infinite loss; the message names the batch's records."""


class SampleTooLongError(DataError):
    """A sample cannot be truncated to the maximum length without losing its media or answer."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ' (valid: a, b, c)' with the closest match first, for error messages."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid choices: {', '.join(choices) or '(none)'}."
