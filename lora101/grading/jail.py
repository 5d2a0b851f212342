"""The two steps that put a student's kernel into its sandbox (``python -m lora101.grading.jail``).

jupyter_client starts a kernel with one command line; ``SandboxKernelManager`` makes that command
``python -c LAUNCH SPEC -- KERNEL_COMMAND...`` (``LAUNCH`` runs this file by its path: it needs only the
standard library), and this module then:

1. **outside** (as the grader): when the grader is root, it drops to an unprivileged user (``nobody``), so
   that the process limit binds (Linux exempts root from it) and nothing root-only can be read. ``nobody``
   cannot reach a folder under a private one (a Python installed in ``/root/.pyenv``), so first, in a mount
   namespace of its own, root binds each folder the sandbox shows into a staging tmpfs that ``nobody`` can
   traverse; then it ``exec``s ``bwrap``, which binds them from there to their real paths;
2. **inside** (``--inner``, the first command in the sandbox): sets the resource limits and ``exec``s the
   kernel. Limits are set inside, not before ``bwrap``: in a new user namespace the process count starts
   at zero, so a limit of 256 means 256 of the sandbox's own processes, whatever else the user runs.

``exec`` keeps the process id, so the process jupyter_client watches and kills is ``bwrap`` itself; with
``--die-with-parent`` and a PID namespace, killing it ends every process the submission started.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
from pathlib import Path

NOBODY = 65534
# Run this file by its path, not as ``lora101.grading.jail``: importing the package would import all of
# lora101.grading (nbformat, jupyter_client...) twice per kernel start, once outside and once inside.
LAUNCH = f"import runpy; runpy.run_path({__file__!r}, run_name='__main__')"
CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE = 0x00020000, 4096, 16384, 1 << 18
LIMITS = {  # SandboxLimits field -> the rlimit that enforces it
    "memory_bytes": resource.RLIMIT_DATA,
    "processes": resource.RLIMIT_NPROC,
    "file_bytes": resource.RLIMIT_FSIZE,
    "cpu_seconds": resource.RLIMIT_CPU,
}


def bwrap_argv(spec: dict, stage: str = "") -> list[str]:
    """bwrap's arguments for ``spec`` (see ``SandboxKernelManager.sandbox_spec``), each bound path taken
    from ``stage + path`` (a staging folder, or "" for the paths themselves)."""
    argv = [spec["bwrap"], "--unshare-all", "--die-with-parent", "--new-session"]
    argv += ["--hostname", "grading", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for link, target in spec["symlinks"]:
        argv += ["--symlink", target, link]
    for path in spec["read_only"]:
        argv += ["--ro-bind", stage + path, path]
    for source, target in spec["writable"]:
        argv += ["--bind", stage + source, target]
    argv += ["--chdir", spec["home"], "--clearenv"]
    for name, value in spec["env"].items():
        argv += ["--setenv", name, value]
    return argv


def _libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}{args}: {os.strerror(errno)}")


def _stage(spec: dict) -> str:
    """In a private mount namespace, bind every path of ``spec`` under a fresh tmpfs; returns its root."""
    _libc_call("unshare", CLONE_NEWNS)
    _libc_call("mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    stage = spec["stage"]
    _libc_call("mount", b"none", stage.encode(), b"tmpfs", 0, b"mode=755")
    for path in list(spec["read_only"]) + [source for source, _ in spec["writable"]]:
        target = Path(stage + path)
        if Path(path).is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        _libc_call("mount", path.encode(), str(target).encode(), None, MS_BIND | MS_REC, None)
    return stage


def _drop_root() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def outside(spec: dict, kernel: list[str]) -> None:
    stage = ""
    if os.geteuid() == 0:
        stage = _stage(spec)
        _drop_root()
    inner = [spec["python"], "-c", LAUNCH, "--inner", json.dumps(spec["limits"]), "--"]
    argv = bwrap_argv(spec, stage) + ["--", *inner, *kernel]
    os.execv(spec["bwrap"], argv)


def inside(limits: dict, kernel: list[str]) -> None:
    for name, value in limits.items():
        if value is not None:
            resource.setrlimit(LIMITS[name], (int(value), int(value)))
    os.execv(kernel[0], kernel)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    head, kernel = argv[:split], argv[split + 1 :]
    if head[0] == "--inner":
        inside(json.loads(head[1]), kernel)
    else:
        outside(json.loads(head[0]), kernel)


if __name__ == "__main__":
    main(sys.argv[1:])
