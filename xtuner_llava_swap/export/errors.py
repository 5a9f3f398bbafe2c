"""The one error type of the export: every message names the file, key or setting at fault."""


class ExportError(RuntimeError):
    """A checkpoint, base model or CONFIG that cannot be exported as asked."""
