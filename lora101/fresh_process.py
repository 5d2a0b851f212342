"""One job in a fresh Python process: a sweep's run (:mod:`lora101.sweep`), a benchmark's row (:mod:`lora101.bench`).

Why a fresh process: the peak memory a job reports is its process's (``torch.cuda.max_memory_allocated`` on
CUDA, the peak resident set on a CPU), so only a job that has a process of its own reports its own peak,
not the largest of every job before it in the same process; and a job that crashes or leaks cannot poison
the next one.

Both sides of the protocol live here:

* the parent, :func:`run`, starts ``python -m lora101.fresh_process MODULE:FUNCTION SPEC [--events]`` (SPEC
  a JSON value, MODULE one of lora101's own), hands each ``EVENT <json>`` line the child prints to
  ``on_event`` as it comes, and returns the value of its ``RESULT <json>`` line. The child's stderr goes to
  a temporary file; a child that exits with an error, or without a result, raises :class:`ChildFailed`
  naming the job's label, with the end of that stderr.
* the child, :func:`main`, imports FUNCTION from MODULE and calls ``FUNCTION(spec)``, or
  ``FUNCTION(spec, emit)`` where the parent listens for events (``--events``): ``emit(value)`` sends one
  JSON value to the parent's ``on_event``. Whatever the function or a library prints goes to stderr, so
  that stdout carries the protocol's lines alone.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

MODULE = "lora101.fresh_process"
PACKAGE = "lora101."  # the only modules a child imports a function from
EVENT, RESULT = "EVENT", "RESULT"
STDERR_TAIL = 4000  # characters of a failed child's stderr shown in the error
USAGE = f"usage: python -m {MODULE} MODULE:FUNCTION SPEC_JSON [--events]"


class ChildFailed(RuntimeError):
    """A job whose process exited with an error or printed no result: ``label`` names the job, ``returncode``
    is the exit status and ``stderr_tail`` the end of what the process wrote to stderr."""

    def __init__(self, label: str, returncode: int, stderr_tail: str) -> None:
        self.label, self.returncode, self.stderr_tail = label, returncode, stderr_tail
        reason = "printed no result" if returncode == 0 else f"exit status {returncode}"
        super().__init__(
            f"{label} failed in its own process ({reason}); the end of its stderr:\n{stderr_tail}"
        )


def run(
    function_path: str,
    spec: Any,
    *,
    label: str,
    on_event: Callable[[Any], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> Any:
    """``FUNCTION(spec)`` of ``function_path`` (``"lora101.MODULE:FUNCTION"``) run in a fresh Python process;
    returns what it returned (through JSON).

    With ``on_event``, the function is called as ``FUNCTION(spec, emit)`` and each ``emit(value)`` reaches
    ``on_event(value)`` while the child runs. ``env``: variables set for the child on top of this process's
    environment. Raises ValueError for a function outside lora101 (nothing is started) and
    :class:`ChildFailed`, naming ``label``, when the child fails.
    """
    function_name(function_path)
    command = [sys.executable, "-m", MODULE, function_path, json.dumps(spec)]
    if on_event is not None:
        command.append("--events")
    child_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile(mode="w+") as errors:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env=child_env
        ) as child:
            try:
                found, result = _read(child.stdout, on_event)
            except BaseException:  # on_event failed, or Ctrl-C: the child must not outlive the parent's wait
                child.kill()
                raise
        if child.returncode != 0 or not found:
            errors.seek(0)
            raise ChildFailed(label, child.returncode, errors.read()[-STDERR_TAIL:])
    return result


def _read(lines: Iterable[str], on_event: Callable[[Any], None] | None) -> tuple[bool, Any]:
    """(whether a RESULT line came, its value), passing every EVENT line's value to ``on_event`` on the way."""
    found, result = False, None
    for line in lines:
        kind, _, payload = line.rstrip("\n").partition(" ")
        if kind == EVENT and on_event is not None:
            on_event(json.loads(payload))
        elif kind == RESULT:
            found, result = True, json.loads(payload)
    return found, result


def function_name(function_path: str) -> tuple[str, str]:
    """(module, function) of ``"lora101.MODULE:FUNCTION"``; ValueError for anything else (a module outside
    lora101 among them: a child runs the package's own functions only)."""
    module, colon, name = function_path.partition(":")
    if not (colon and name.isidentifier() and module.startswith(PACKAGE)):
        raise ValueError(
            f"{function_path!r}: give MODULE:FUNCTION with MODULE inside lora101 (such as lora101.sweep:run_from_spec)"
        )
    return module, name


# ------------------------------------------------------------------------------------------------
# The child


def main(argv: list[str] | None = None) -> int:
    """The child's side: ``python -m lora101.fresh_process MODULE:FUNCTION SPEC_JSON [--events]``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3) or argv[2:] not in ([], ["--events"]):
        print(USAGE, file=sys.stderr)
        return 2
    module, name = function_name(argv[0])
    function = getattr(importlib.import_module(module), name)
    spec = json.loads(argv[1])
    channel = _protocol_channel()

    def send(kind: str, value: Any) -> None:
        channel.write(f"{kind} {json.dumps(value)}\n")
        channel.flush()

    if argv[2:]:
        result = function(spec, lambda value: send(EVENT, value))
    else:
        result = function(spec)
    send(RESULT, result)
    return 0


def _protocol_channel():
    """A file on this process's stdout for the protocol's lines alone: from here on, file descriptor 1 (what
    ``print`` and any library write to) goes to stderr, so nothing can come between or inside those lines."""
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return channel


if __name__ == "__main__":
    sys.exit(main())
