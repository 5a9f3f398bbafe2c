"""The error types of reading checkpoints and exporting them: every message names the file,
key or setting at fault.

They live at the top of the package because two rooms raise them: the checkpoint room
(:mod:`xtuner_llava_swap.checkpoint`, which reads what training left) and the export
(:mod:`xtuner_llava_swap.export`, which imports the checkpoint room); the converter prints
an :class:`ExportError` as its one line and exits.
"""


class ExportError(RuntimeError):
    """A checkpoint, base model or CONFIG that cannot be exported as asked."""


class ExportInterrupted(KeyboardInterrupt):
    """SIGTERM / SIGHUP during an export: handled like Ctrl-C (the temporary folder goes)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
