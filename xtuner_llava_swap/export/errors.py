"""The error types of the export: every message names the file, key or setting at fault."""


class ExportError(RuntimeError):
    """A checkpoint, base model or CONFIG that cannot be exported as asked."""


class ExportInterrupted(KeyboardInterrupt):
    """SIGTERM / SIGHUP during an export: handled like Ctrl-C (the temporary folder goes)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
