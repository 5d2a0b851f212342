"""The errors that mean "bad input", not "a bug": the command line turns each into one line and exit status 2.

They carry what was wrong as data (the field or the option), so that nobody has to read it back out of a
message: :class:`ConfigError` names a :class:`lora101.finetune.FinetuneConfig` field (the command line
spells it as its option, ``rank`` -> ``--rank``), :class:`OptionError` names a command-line option itself.
Every other bad-input error of the package (bad data, a folder that must not be overwritten, ...) derives
from :class:`UsageError` too.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input that the learner can fix; the message says what to do."""


class ConfigError(UsageError):
    """A configuration value refused: ``field`` is its name, ``message`` what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class OptionError(UsageError):
    """A command-line option refused: ``option`` as typed (``--size``), ``message`` what is wrong with it."""

    def __init__(self, option: str, message: str) -> None:
        self.option, self.message = option, message
        super().__init__(f"{option}: {message}")


class OutputError(UsageError):
    """An output folder that may not be written (it holds something that would be lost) or resumed."""


class Interrupted(Exception):
    """A run stopped with Ctrl-C: ``saved`` says what was kept (a checkpoint, or nothing)."""

    def __init__(self, saved: str, checkpoint=None) -> None:
        self.saved, self.checkpoint = saved, checkpoint
        super().__init__(saved)
