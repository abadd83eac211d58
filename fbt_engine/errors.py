"""User-facing errors: one sentence naming the bad input, plus a hint saying what to do instead.

The CLI prints `error: <message>` and `hint: <hint>` on stderr and exits 2 for any FBTError;
anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations


class FBTError(Exception):
    """Base error for problems the user can fix (bad preset, missing data, unsupported pair)."""

    kind = "user_error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(FBTError):
    kind = "config_error"


class ModelError(FBTError):
    """Unknown model, unsupported family, or an input size a model cannot take."""

    kind = "model_error"


class DataError(FBTError):
    kind = "data_error"


class TrainingError(FBTError):
    """A run failed for a reason the user can act on (NaN loss, missing checkpoint)."""

    kind = "training_error"


class WriteError(FBTError):
    """A file could not be written (disk full, permissions); the previous version is intact."""

    kind = "write_error"


class DamagedFile(FBTError):
    """A checkpoint or weight file is truncated, corrupt, or holds something other than weights."""

    kind = "damaged_file"


class NonFiniteWeights(FBTError):
    """Refused to save weights holding NaN/inf."""

    kind = "nan_weights"
