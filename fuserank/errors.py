"""Errors FuseRank raises on purpose, so CLIs and the API can tell them from bugs."""


class FuseRankError(Exception):
    """Base of every deliberate FuseRank error (the CLI prints its message and exits 2)."""


class InputError(FuseRankError, ValueError):
    """Bad input data: says which file, which line (1-based, header = line 1) and field, and what was expected."""

    def __init__(self, path, message, line=None, field=None, expected=None):
        self.path, self.line, self.field, self.expected = path, line, field, expected
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        text = f"{where}: {message}"
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class ArtifactError(FuseRankError):
    """A data or model directory is missing a file or does not match its manifest."""


class NightlyError(FuseRankError):
    """A step of the nightly job failed (dvc, precompute, the model store, the rollout): nothing was published."""
