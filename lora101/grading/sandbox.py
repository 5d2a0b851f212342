"""Each submission's kernel in a bubblewrap sandbox: what it can see, what it may use, how it is stopped.

A submission is code from someone else. Its kernel runs under ``bwrap`` (Debian's ``bubblewrap``) with
its own user, PID, network, IPC and UTS namespaces: no network, no view of (or signal to) the grader's
processes. It sees a read-only system (``/usr``, a few files of ``/etc``), the Python environment and the
course package read-only, the base model's cache read-only, an empty ``/tmp``, and one private writable
folder, empty at the start (its home and working folder; the course's exercises read no files).
It does not see the grading folder (gradebook, ``source/``, ``release/``, other submissions, worker
folders) nor the instructor's home. Limits (``SandboxLimits``): memory, processes, file size, CPU time.
The kernel talks to the grader over Unix sockets (jupyter_client's ``ipc`` transport) in a folder bound
into the sandbox, so it needs no network. The launch itself is ``lora101.grading.jail``.

``sandbox_problem()`` says why no sandbox can be made here (not Linux, no ``bwrap``, user namespaces
off), or ``None``; ``lora101 grade`` then refuses unless told ``--unsandboxed``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Dict

import lora101
from lora101.grading.jail import LAUNCH, NOBODY
from lora101.models import cache_root as models_cache_root
from lora101.models import make_readable

HOME = "/home/student"
# The only files of /etc a Python kernel reads: the dynamic linker's cache and the time zone.
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
)
PASSED_ENV = ("LANG", "LC_ALL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TZ")
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap)"
)


@dataclass(frozen=True)
class SandboxLimits:
    """What one submission's kernel may use (``None``: no limit)."""

    memory_bytes: int | None = 6 * 2**30  # RLIMIT_DATA: heap and private mappings, not shared libraries
    processes: int | None = 256
    file_bytes: int | None = 64 * 2**20
    cpu_seconds: int | None = 600


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@cache
def sandbox_problem() -> str | None:
    """Why a sandbox cannot be made on this machine, with what to do; ``None`` when it can."""
    if not sys.platform.startswith("linux"):
        return f"the grading sandbox needs Linux (bubblewrap); this is {sys.platform}"
    bwrap = bwrap_path()
    if bwrap is None:
        return f"bwrap was not found on PATH: {INSTALL_HINT}"
    try:
        probe = subprocess.run(
            [bwrap, "--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap could not be run ({err})"
    if probe.returncode != 0:
        why = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit {probe.returncode}"
        return (
            f"bwrap cannot create namespaces here ({why}): user namespaces may be off "
            "(sysctl kernel.unprivileged_userns_clone=1, or user.max_user_namespaces > 0)"
        )
    return None


def _python_paths() -> list[str]:
    """Folders the kernel's Python needs: the interpreter's installation, the environment, the course."""
    paths = {sys.base_prefix, sys.prefix, str(Path(lora101.__file__).resolve().parent)}
    paths.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    return sorted(p for p in paths if Path(p).exists())


def cache_root() -> Path:
    """The converted base model's cache (``lora101.models.cache_root``, imported here only when called:
    ``lora101.models`` imports transformers, which ``lora101 --help`` should not wait for)."""

    return models_cache_root()


def read_only_paths() -> list[str]:
    """Every path bound read-only, outermost first (a path inside another one is dropped)."""
    wanted = ["/usr", *_python_paths(), *(p for p in ETC_FILES if Path(p).exists())]
    if cache_root().is_dir():
        wanted.append(str(cache_root()))  # the converted base model, for exercises that load it
    kept: list[str] = []
    for path in sorted(set(wanted)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def open_model_cache() -> None:
    """As root, let the sandbox (which runs as nobody) read the model cache: caches converted before
    ``lora101.models.make_readable`` existed were private. Once per grading run, not per kernel."""
    if os.geteuid() == 0 and cache_root().is_dir():
        make_readable(cache_root())


def _symlinks() -> list[tuple[str, str]]:
    """Merged-/usr systems: /bin, /lib, /lib64, /sbin are links into /usr, recreated inside."""
    return [(p, os.readlink(p)) for p in ("/bin", "/lib", "/lib64", "/sbin") if os.path.islink(p)]


class SandboxKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, starting the kernel inside a bubblewrap sandbox.

    Each kernel gets a private folder ``self.workdir`` with ``connection/`` (the connection file and the
    kernel's Unix sockets: ``ipc`` transport, no network needed) and ``home/`` (the kernel's home and working
    folder: ``/home/student`` inside). Interrupts are sent as messages (the kernel interrupts itself inside
    its own session), and a shutdown kills the sandbox's whole process tree.
    """

    limits = Dict(help="SandboxLimits as a dict").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.workdir = Path(tempfile.mkdtemp(prefix="lora101-kernel-"))
        self.home = self.workdir / "home"
        connection = self.workdir / "connection"
        self.home.mkdir()
        connection.mkdir()
        (self.workdir / "stage").mkdir()  # root's staging mount point (jail.py), empty otherwise
        if os.geteuid() == 0:  # the sandbox runs as nobody (see jail.py): it must be able to write these
            for path in (self.workdir, self.home, connection):
                os.chown(path, NOBODY, NOBODY)
        self.transport = "ipc"
        self.ip = str(connection / "kernel")
        self.connection_file = str(connection / "kernel.json")

    def sandbox_spec(self) -> dict:
        env = {"HOME": HOME, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "MPLBACKEND": "Agg"}
        env.update({name: os.environ[name] for name in PASSED_ENV if name in os.environ})
        env["LORA101_CACHE"] = str(cache_root())
        env["MPLCONFIGDIR"] = "/tmp/matplotlib"
        # ipykernel watches the process named here and exits when it goes; inside the sandbox its parent is
        # the sandbox's init (PID 1), which ipykernel knows never to watch. Set, it also stops ipykernel
        # printing its "Ctrl-C will not work" notice into the grader's output.
        env["JPY_PARENT_PID"] = "1"
        connection = str(self.workdir / "connection")
        return dict(
            bwrap=bwrap_path(),
            python=sys.executable,
            read_only=read_only_paths(),
            writable=[(str(self.home), HOME), (connection, connection)],
            symlinks=_symlinks(),
            home=HOME,
            stage=str(self.workdir / "stage"),
            env=env,
            limits=self.limits or asdict(SandboxLimits()),
        )

    def format_kernel_cmd(self, extra_arguments=None) -> list[str]:
        kernel = super().format_kernel_cmd(extra_arguments)
        return [sys.executable, "-c", LAUNCH, json.dumps(self.sandbox_spec()), "--", *kernel]

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        kw["cwd"] = str(self.home)  # the grader's own folders are not the kernel's business
        kw["env"] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if os.geteuid() == 0:  # written by the grader (mode 600); the kernel, as nobody, must read it
            os.chown(self.connection_file, NOBODY, NOBODY)
        return await super()._async_launch_kernel(kernel_cmd, **kw)

    async def _async_interrupt_kernel(self) -> None:
        # A signal to the kernel's process group would reach bwrap, not the kernel in its own session.
        msg = self.session.msg("interrupt_request", content={})
        self._connect_control_socket()
        self.session.send(self._control_socket, msg)

    interrupt_kernel = _async_interrupt_kernel

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart)
        if not restart:
            shutil.rmtree(self.workdir, ignore_errors=True)

    cleanup_resources = _async_cleanup_resources
