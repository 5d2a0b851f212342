"""Sweeps of the fine-tune's knobs (lesson 6): rank, target modules, alpha, learning rate, method, bad fits.

Every run trains SmolLM2 on the contract -> JSON task of :mod:`lora101.data` for ``steps`` optimizer steps
with the transformers ``Trainer`` (through :func:`lora101.finetune.train`), then scores the held-out
test split. A run is one :class:`Run` (what changes) under one :class:`Settings` (what stays fixed).

Each run executes in a fresh Python process (:mod:`lora101.fresh_process`), so that its peak memory is its
own and a crash in one run cannot poison the next; the parent streams the child's step events into one tqdm
bar and writes every measured number into a JSON results file (:func:`run_sweep`), together with the
machine, the library versions and the settings. The file is never overwritten unless ``force=True``.

How a run is scored: :func:`lora101.evaluate.teacher_forced` on the held-out test split, one forward pass
per batch instead of a generation loop (about 50x cheaper on a CPU, which is what makes a sweep affordable
there): ``test_loss``, ``token_accuracy`` and ``exact_match``, which counts the examples that greedy
decoding would reproduce exactly (its docstring says why).
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lora101 import finetune as ft
from lora101 import fresh_process
from lora101.data import task_examples, tokenize_examples
from lora101.doctor import installed_versions
from lora101.errors import ConfigError, OptionError
from lora101.evaluate import teacher_forced
from lora101.lora import count_parameters
from lora101.memory import lora_parameter_count, peak_memory_bytes, peak_rss_bytes
from lora101.models import DEFAULT_MODEL, choose_device, has_native_bf16, load_tokenizer, resolve_model
from lora101.sweep_stats import by_setting, spread
from lora101.targets import ALL_LINEAR, parse_targets
from lora101.tasks import contracts

FORMAT = "lora101-sweep/2"  # /2: every setting once per seed (top-level "seeds"); /1: one seed
FORMATS = ("lora101-sweep/1", FORMAT)  # both are read
GROUPS: tuple[str, ...] = ("method", "lr", "rank", "targets", "alpha", "wrong_tool")
METHODS: tuple[str, ...] = ("none", "lora", "qlora", "full")
RANKS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
ALPHAS: tuple[int, ...] = (2, 8, 32, 128, 512)
QV = "q_proj,v_proj"
HELD_OUT_SEED = 0  # every run of every sweep is scored on the same held-out examples, whatever its seed
# Set in each run's process (lora101.fresh_process): tokenizers runs no thread pool of its own (its threads would
# compete with torch's, which Settings.threads sets, and it warns when a process forks after using them), and
# Python's warnings are off (the libraries' notices would fill the stderr that a failed run shows the end of).
RUN_ENVIRONMENT = {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


@dataclass(frozen=True)
class Settings:
    """What stays fixed across the runs of one sweep."""

    steps: int = 30  # optimizer steps per run (each sees steps x batch_size fresh training examples)
    batch_size: int = 4
    eval_examples: int = 48  # held-out test examples scored per run
    lr: float = 1e-3  # the LoRA learning rate (a common claim: tune it; LoRA's best is ~10x full FT's)
    full_lr: float = 5e-5  # a usual full fine-tuning learning rate
    rank: int = 16  # the reference adapter: rank 16, alpha 32 (alpha = 2r), all linear layers
    warmup_steps: int = 3
    noise: float = 0.5  # the "poor data" run: this fraction of training answers belong to another sentence
    seeds: tuple[int, ...] = (0,)  # each run once per seed: it draws the training examples, their order and
    # the adapters' initial matrices (the held-out examples are the same for every seed: HELD_OUT_SEED)
    threads: int = 0  # torch threads in each run; 0 keeps torch's default
    model: str = DEFAULT_MODEL

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_examples", "rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        object.__setattr__(self, "seeds", tuple(self.seeds))  # a list from JSON or the command line
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(
                "seeds", f"must be distinct integers >= 0, at least one, got {list(self.seeds)}"
            )
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ConfigError(
                    "seeds", f"must be distinct integers >= 0, at least one, got {list(self.seeds)}"
                )
        for name in ("warmup_steps", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be an integer >= 0, got {value!r}")
        for name in ("lr", "full_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(name, f"must be a learning rate between 0 and 1, got {value!r}")
        if not 0 < self.noise <= 1:
            raise ConfigError("noise", f"must be a fraction in (0, 1], got {self.noise!r}")
        if self.eval_examples > 2000:
            raise ConfigError("eval_examples", f"must be at most 2000, got {self.eval_examples}")


@dataclass(frozen=True)
class Run:
    """One training run: the method and the knobs that differ from the reference adapter.

    ``rank``, ``alpha`` and ``targets`` describe the adapter: runs with no adapter ("none", "full") keep
    the defaults in results files, and ignore them (see :attr:`key`).
    """

    name: str
    method: str = "lora"  # "none" (the base, untrained), "lora", "qlora" (4-bit NF4 base) or "full"
    rank: int = 16
    alpha: int = 32
    targets: str = ALL_LINEAR  # a lora101.targets spec: "all-linear" or comma-separated module names
    lr: float = 1e-3
    base: str = "pretrained"  # or "random": the same architecture, freshly initialised (a weak base)
    data: str = "clean"  # or "noisy": part of the training answers belong to other sentences (poor data)
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.base not in ("pretrained", "random"):
            raise ValueError(f"base must be 'pretrained' or 'random', got {self.base!r}")
        if self.data not in ("clean", "noisy"):
            raise ValueError(f"data must be 'clean' or 'noisy', got {self.data!r}")
        if self.rank < 1 or self.alpha < 1:
            raise ValueError(f"rank and alpha must be >= 1, got rank={self.rank}, alpha={self.alpha}")

    @property
    def key(self) -> tuple:
        """What the run does (its name and groups aside): two runs with equal keys are one run."""
        d = asdict(self)
        d.pop("name"), d.pop("groups")
        if self.method in ("none", "full"):  # no adapter: rank, alpha and targets mean nothing
            d.update(rank=0, alpha=0, targets="")
        if self.method == "none":
            d.update(lr=0.0, data="clean")
        return tuple(sorted(d.items()))


def target_modules(targets: str) -> tuple[str, ...]:
    """The module names ``targets`` adapts: ``"all-linear"`` -> SmolLM2's seven projections."""
    return parse_targets(targets, "targets")


def adapter_parameters(rank: int, targets: str, model: str = "SmolLM2-135M") -> int:
    """Trainable parameters of a LoRA adapter: ``rank * (in + out)`` per targeted layer, all blocks."""
    return lora_parameter_count(model, rank, target_modules(targets))


def equal_budget_rank(rank: int, targets: str, other_targets: str, model: str = "SmolLM2-135M") -> int:
    """The rank on ``other_targets`` whose adapter has the closest parameter count to ``rank`` on ``targets``.

    On SmolLM2-135M, q and v at rank 16 (921,600) match all seven linear layers at rank 3 (915,840).
    """
    want = adapter_parameters(rank, targets, model)
    per_rank = adapter_parameters(1, other_targets, model)
    return max(1, round(want / per_rank))


def plan(
    settings: Settings = Settings(),
    groups: Iterable[str] = GROUPS,
    ranks: Sequence[int] = RANKS,
    alphas: Sequence[int] = ALPHAS,
) -> list[Run]:
    """The runs that answer ``groups``, each run once (a run several groups need is listed with all of them).

    * ``method``: the base untrained; full fine-tuning at ``full_lr``; LoRA and QLoRA (rank ``rank``,
      alpha 2r, all linear layers) at ``lr``.
    * ``lr``: LoRA and full fine-tuning, each at both learning rates.
    * ``rank``: LoRA at each of ``ranks`` with alpha = 2r (so the scale alpha/r stays 2).
    * ``targets``: q,v at rank ``rank`` against all linear layers at the rank with the same parameter count.
    * ``alpha``: rank ``rank`` with each of ``alphas`` (scale alpha/r from tiny to huge).
    * ``wrong_tool``: the reference adapter on a freshly initialised base (weak base) and on noisy answers
      (poor data), beside the reference.
    """
    groups = list(groups)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ConfigError("groups", f"{unknown or groups!r} not understood; choose from {GROUPS}")
    r, lr, full_lr = settings.rank, settings.lr, settings.full_lr
    ref = Run(f"LoRA r={r}", rank=r, alpha=2 * r, lr=lr)
    wanted: list[Run] = []

    def add(run: Run, group: str) -> None:
        wanted.append(replace(run, groups=(group,)))

    if "method" in groups:
        add(Run("base (untrained)", method="none"), "method")
        add(Run(f"full FT lr={full_lr:g}", method="full", lr=full_lr), "method")
        add(ref, "method")
        add(replace(ref, name=f"QLoRA r={r}", method="qlora"), "method")
    if "lr" in groups:
        add(replace(ref, name=f"LoRA r={r} lr={lr:g}"), "lr")
        add(replace(ref, name=f"LoRA r={r} lr={full_lr:g}", lr=full_lr), "lr")
        add(Run(f"full FT lr={full_lr:g}", method="full", lr=full_lr), "lr")
        add(Run(f"full FT lr={lr:g}", method="full", lr=lr), "lr")
    if "rank" in groups:
        for rank in ranks:
            add(replace(ref, name=f"LoRA r={rank}", rank=rank, alpha=2 * rank), "rank")
    if "targets" in groups:
        r_all = equal_budget_rank(r, QV, ALL_LINEAR)
        add(replace(ref, name=f"q,v r={r}", targets=QV), "targets")
        add(replace(ref, name=f"all-linear r={r_all}", rank=r_all, alpha=2 * r_all), "targets")
        add(ref, "targets")
    if "alpha" in groups:
        for alpha in alphas:
            add(replace(ref, name=f"r={r} alpha={alpha}", alpha=alpha), "alpha")
    if "wrong_tool" in groups:
        add(replace(ref, name=f"LoRA r={r}, pretrained base, clean data"), "wrong_tool")
        add(replace(ref, name=f"LoRA r={r}, random base", base="random"), "wrong_tool")
        add(replace(ref, name=f"LoRA r={r}, {settings.noise:.0%} wrong answers", data="noisy"), "wrong_tool")
    return _once_each(wanted)


def _once_each(wanted: list[Run]) -> list[Run]:
    """``wanted`` with each run once (by :attr:`Run.key`), listed with every group that asked for it."""
    merged: dict[tuple, Run] = {}
    for run in wanted:
        if run.key in merged:
            old = merged[run.key]
            merged[run.key] = replace(
                old, groups=old.groups + tuple(g for g in run.groups if g not in old.groups)
            )
        else:
            merged[run.key] = run
    return list(merged.values())


# ------------------------------------------------------------------------------------------------
# One run (inside the worker process)


def _examples(settings: Settings, data: str, seed: int) -> tuple[list[dict], list[dict]]:
    """(training, held-out) examples of the contract task: the training ones drawn with ``seed``, the held-out
    ones with :data:`HELD_OUT_SEED`; "noisy" swaps ``noise`` of the training answers between sentences."""
    n_train = settings.steps * settings.batch_size
    train = task_examples(contracts, n_train, "train", seed)
    held_out = task_examples(contracts, settings.eval_examples, "test", HELD_OUT_SEED)
    if data == "noisy":
        rng = random.Random(f"lora101-sweep/noise/{seed}")
        chosen = rng.sample(range(n_train), round(settings.noise * n_train))
        shuffled = [train[i]["response"] for i in chosen]
        rng.shuffle(shuffled)
        for i, answer in zip(chosen, shuffled, strict=True):
            train[i] = {**train[i], "response": answer}
    return train, held_out


def finetune_config(run: Run, settings: Settings, seed: int) -> ft.FinetuneConfig:
    """The :class:`lora101.finetune.FinetuneConfig` of ``run`` at ``seed``: the one description of a training
    run (the sweep logs every step and keeps no checkpoint)."""
    return ft.FinetuneConfig(
        model=settings.model,
        precision=_precision(run),
        rank=run.rank,
        alpha=run.alpha,
        targets=list(target_modules(run.targets)),
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=run.lr,
        warmup_steps=settings.warmup_steps,
        seed=seed,
        save_steps=10**9,
        logging_steps=1,
    )


def _precision(run: Run) -> str:
    """QLoRA's base in 4-bit; every other base in 16 bits where the device computes in bf16 natively
    (Ampere+ GPUs), in fp32 elsewhere (``ft.load_base`` decides): LoRA and full fine-tuning are compared
    with QLoRA as they would be run on that device."""
    return "nf4" if run.method == "qlora" else "bf16"


def _model(run: Run, settings: Settings, seed: int):
    """The model to train for ``run`` and its parameter counts."""
    if run.base == "random":
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(seed)
        config = AutoConfig.from_pretrained(resolve_model(settings.model).path)
        device = choose_device()
        dtype = torch.bfloat16 if has_native_bf16(device) else torch.float32  # as ft.load_base's "bf16"
        base = AutoModelForCausalLM.from_config(config, torch_dtype=dtype).to(device)
        for p in base.parameters():
            p.requires_grad_(False)
    else:
        base = ft.load_base(settings.model, precision=_precision(run))
    if run.method in ("lora", "qlora"):
        torch.manual_seed(seed)  # the adapters' A matrices are drawn here
        model = ft.add_lora(base, run.rank, run.alpha, list(target_modules(run.targets)))
    else:
        model = base
        if run.method == "full":
            for p in model.parameters():
                p.requires_grad_(True)
    return model, asdict(count_parameters(model))


def run_one(
    run: Run,
    settings: Settings,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train and score one run at one ``seed`` in this process; returns every number it measured.

    ``on_step(step)`` is called after each optimizer step. Peak memory is the process's: call this in a
    fresh process (as :func:`run_sweep` does) for it to be the run's own.
    """
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = choose_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    tokenizer = load_tokenizer(settings.model)
    train_examples, held_out = _examples(settings, run.data, seed)
    test_ds = tokenize_examples(tokenizer, held_out, None, ft.FinetuneConfig.max_length)
    rss_before_model = peak_rss_bytes()
    model, counts = _model(run, settings, seed)
    rss_after_model = peak_rss_bytes()
    result: dict[str, Any] = {
        "parameters": counts,
        "rss_before_model_bytes": rss_before_model,
        "rss_after_model_bytes": rss_after_model,
    }
    if run.method != "none":
        result["train"] = _train(finetune_config(run, settings, seed), model, train_examples, on_step)
    start = time.perf_counter()
    result["eval"] = teacher_forced(model, tokenizer, test_ds)
    result["eval"]["wall_s"] = time.perf_counter() - start
    result["peak_memory_bytes"] = peak_memory_bytes(device)
    result["peak_memory_kind"] = (
        "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of the run's process"
    )
    result["device"] = str(device)
    result["threads"] = torch.get_num_threads()
    if load_start is not None:
        result["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    return result


def _train(config: ft.FinetuneConfig, model, train_examples: list[dict], on_step) -> dict:
    """Train ``model`` as ``config`` says with :func:`lora101.finetune.run` (no evaluation, nothing kept);
    its steps, time, tokens and losses."""
    callbacks = [_step_callback(on_step)] if on_step else []
    report = ft.run(
        config, (train_examples, []), evaluate=False, model=model, callbacks=callbacks, progress=False
    )
    trained = report.train
    losses = trained.losses
    return {
        "steps": trained.global_step,
        "wall_s": trained.wall_s,
        "tokens": trained.tokens,
        "tokens_per_s": trained.tokens_per_s,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "last5_mean_loss": sum(losses[-5:]) / len(losses[-5:]) if losses else None,
        "losses": losses,
    }


def _step_callback(on_step: Callable[[int], None]):
    from transformers import TrainerCallback

    class StepEvents(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            on_step(state.global_step)

    return StepEvents()


def run_from_spec(spec: dict[str, Any], emit: Callable[[int], None]) -> dict[str, Any]:
    """One run in its own process (:func:`lora101.fresh_process.run`, as :func:`run_sweep` starts it): ``spec``
    holds the :class:`Run`, the :class:`Settings` and the seed; each optimizer step is emitted as its number."""
    run = Run(**{**spec["run"], "groups": tuple(spec["run"]["groups"])})
    return run_one(run, Settings(**spec["settings"]), spec["seed"], emit)


# ------------------------------------------------------------------------------------------------
# The sweep (parent process)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU (if any), OS and the load average when the sweep started."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
        "os": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_bytes"] = pages * size
    except (ValueError, OSError, AttributeError):
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = list(os.getloadavg())
    return info


def check_partial(path: str | os.PathLike, resume: bool = False, force: bool = False) -> None:
    """Refuse to start a sweep over the runs a stopped one left in ``path + '.partial'`` (unless ``force``),
    and to resume from a partial file that is not there."""
    partial = Path(str(path) + ".partial")
    if resume and not partial.is_file():
        raise OptionError("--resume", f"{partial} does not exist; start the sweep without --resume")
    if partial.exists() and not (resume or force):
        raise OptionError(
            "--output",
            f"{partial} holds the runs of a stopped sweep; pass --resume to carry on from them "
            "or --force to start again",
        )


def check_output_path(path: str | os.PathLike, force: bool = False) -> Path:
    """``path`` as a Path, after checking that a results file may be written there.

    Raises :class:`lora101.errors.OptionError` (``--output``) when a file is already there (unless ``force``),
    when the name does not end in ``.json`` or names a folder, or when its folder does not exist.
    """
    path = Path(path)
    if path.suffix != ".json":
        raise OptionError("--output", f"{path} must end in .json (the results file is JSON)")
    if path.is_dir():
        raise OptionError("--output", f"{path} is a folder; give a file name such as {path / 'sweep.json'}")
    if not path.parent.is_dir():
        raise OptionError("--output", f"the folder {path.parent} does not exist; create it first")
    if path.exists() and not force:
        raise OptionError(
            "--output", f"{path} already exists; choose another name or pass --force to replace it"
        )
    return path


def _new_document(settings: Settings, command: str | None) -> dict[str, Any]:
    fixed = asdict(settings)
    seeds = list(fixed.pop("seeds"))
    return {
        "format": FORMAT,
        "command": command,
        "started": _now(),
        "finished": None,
        "complete": False,
        "machine": machine_info(),
        "versions": installed_versions(),
        "settings": fixed,
        "seeds": seeds,
        "scoring": "teacher-forced on the held-out test split (the same examples for every run and seed): "
        "exact_match = greedy decoding reproduces the reference answer exactly "
        "(see lora101.evaluate.teacher_forced)",
        "runs": [],
    }


def _resumed_document(partial: Path, settings: Settings, command: str | None) -> dict[str, Any]:
    """The runs a stopped sweep left in ``partial``, checked to be this sweep's (same settings, seeds and
    library versions); the resumption is recorded with the machine it happens on."""
    fresh = _new_document(settings, command)
    if not partial.is_file():
        raise OptionError("--resume", f"{partial} does not exist; start the sweep without --resume")
    doc = _read_json(partial, f"--resume: {partial}", "does not exist")
    for key in ("format", "settings", "seeds", "versions"):
        if doc.get(key) != fresh[key]:
            raise OptionError(
                "--resume",
                f"{partial} was written with other {key} ({doc.get(key)!r}, now {fresh[key]!r}); "
                "give the same options, or start again with --force",
            )
    doc.setdefault("resumed", []).append({"at": fresh["started"], "machine": fresh["machine"]})
    return doc


def run_sweep(
    runs: Sequence[Run],
    settings: Settings,
    output: str | os.PathLike | None = None,
    *,
    force: bool = False,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run each of ``runs`` once per seed of ``settings`` (each in its own process; a run's seeds one after
    another, so that a stopped sweep leaves whole settings behind) and return the results document.

    With ``output``, the document is written there as JSON (refusing to replace an existing file unless
    ``force``); while the sweep runs, the runs done so far are kept in ``output + '.partial'``, so an
    interrupted sweep leaves its measurements behind, and ``resume=True`` carries on from them, running
    only the (run, seed) pairs not yet done. ``command`` records how the sweep was started.
    """
    path = check_output_path(output, force) if output is not None else None
    partial = Path(str(path) + ".partial") if path is not None else None
    if resume and partial is None:
        raise OptionError("--resume", "needs --output (its .partial file holds the runs done so far)")
    if partial is not None:
        check_partial(path, resume, force)
    doc = _resumed_document(partial, settings, command) if resume else _new_document(settings, command)
    done = {(r["name"], r["seed"]) for r in doc["runs"]}
    unplanned = sorted({name for name, _ in done} - {run.name for run in runs})
    if unplanned:
        raise OptionError(
            "--resume", f"{partial} holds runs this sweep does not plan ({unplanned}); give the same --groups"
        )
    todo = [(seed, run) for run in runs for seed in settings.seeds if (run.name, seed) not in done]
    _run_all(todo, settings, doc, partial, progress)
    doc["finished"], doc["complete"] = _now(), True
    if path is not None:
        check_output_path(path, force)  # nothing appeared there while the sweep ran
        _write_json(path, doc)
        partial.unlink(missing_ok=True)
    return doc


def _run_all(
    todo: list[tuple[int, Run]], settings: Settings, doc: dict, partial: Path | None, progress: bool
):
    """Run each (seed, run) of ``todo`` in its own process, appending its record to ``doc["runs"]``."""
    total = sum(settings.steps if r.method != "none" else 0 for _, r in todo) + len(todo)
    bar = tqdm(total=total, desc="sweep", unit="step", disable=not progress)
    try:
        for seed, run in todo:
            bar.set_description(f"{run.name} (seed {seed})")
            done = 0

            def on_step(step: int) -> None:
                nonlocal done
                bar.update(step - done)
                done = step

            start = time.perf_counter()
            result = fresh_process.run(
                "lora101.sweep:run_from_spec",
                {"run": asdict(run), "settings": asdict(settings), "seed": seed},
                label=f"run {run.name!r} (seed {seed})",
                on_event=on_step,
                env=RUN_ENVIRONMENT,
            )
            result["process_wall_s"] = time.perf_counter() - start
            bar.update(1)  # the evaluation
            doc["runs"].append({**asdict(run), "seed": seed, "groups": list(run.groups), "result": result})
            if partial is not None:
                _write_json(partial, doc)
    finally:
        bar.close()


def _read_json(path: Path, name: str, missing: str) -> dict[str, Any]:
    """``path``'s JSON; FileNotFoundError (``name``: ``missing``) or ValueError naming ``name``."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: {missing}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: not JSON ({err})") from None


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------
# Reading results


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """A results file written by :func:`run_sweep`, checked for its format and its fields."""
    path = Path(path)
    doc = _read_json(path, str(path), f"no such results file; `lora101 sweep --output {path}` writes one")
    if doc.get("format") not in FORMATS:
        raise ValueError(f"{path}: format {doc.get('format')!r} is not one of {FORMATS}")
    missing = [k for k in ("machine", "versions", "settings", "runs") if k not in doc]
    if missing:
        raise ValueError(f"{path}: missing {missing}")
    if doc["format"] == "lora101-sweep/1":  # one seed, kept in the settings: give it the /2 layout
        doc["seeds"] = [doc["settings"]["seed"]]
        for run in doc["runs"]:
            run.setdefault("seed", doc["settings"]["seed"])
    known = {f.name for f in fields(Run)}
    for i, run in enumerate(doc["runs"]):
        if not known <= set(run) or "eval" not in run.get("result", {}):
            raise ValueError(f"{path}: run {i} lacks fields ({sorted(known - set(run))} or result.eval)")
    return doc


def runs_in(doc: dict[str, Any], group: str) -> list[dict[str, Any]]:
    """The runs of ``doc`` that belong to ``group``, in the order they ran."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    return [r for r in doc["runs"] if group in r["groups"]]


def table(runs: Iterable[dict[str, Any]], timing: bool = False) -> str:
    """A plain-text table of runs: trainable parameters, final training loss, test loss, token accuracy,
    exact match; with ``timing``, also tokens/s and peak memory (which vary from machine to machine).

    Runs of one setting at several seeds make one row: each score's mean over the seeds and, in brackets,
    its range (lowest-highest), with the number of seeds; see :mod:`lora101.sweep_stats`."""
    runs = list(runs)
    settings = by_setting(runs)
    if len(settings) < len(runs):
        return _spread_table(settings, timing)
    head = f"{'run':<34} {'trainable':>11} {'train loss':>10} {'test loss':>9} {'token acc':>9} {'exact':>9}"
    if timing:
        head += f" {'tokens/s':>8} {'peak MiB':>8}"
    lines = [head]
    for r in runs:
        res, ev = r["result"], r["result"]["eval"]
        train = res.get("train")
        loss = f"{train['last5_mean_loss']:.3f}" if train else "-"
        exact = f"{ev['exact']}/{ev['n']}"
        line = (
            f"{r['name']:<34} {res['parameters']['trainable']:>11,} {loss:>10} {ev['test_loss']:>9.3f} "
            f"{ev['token_accuracy']:>9.1%} {exact:>9}"
        )
        if timing:
            tps = f"{train['tokens_per_s']:.0f}" if train else "-"
            line += f" {tps:>8} {res['peak_memory_bytes'] / 2**20:>8.0f}"
        lines.append(line)
    return "\n".join(lines)


def _spread_table(settings: dict[str, list[dict[str, Any]]], timing: bool) -> str:
    """:func:`table` for repeated runs: one row a setting, mean [lowest-highest] over its seeds (train loss,
    token accuracy and tokens/s: the mean; peak memory: the highest)."""
    head = (
        f"{'run':<34} {'seeds':>5} {'trainable':>11} {'train loss':>10} {'test loss [range]':>21} "
        f"{'token acc':>9} {'exact match [range]':>19}"
    )
    if timing:
        head += f" {'tokens/s':>8} {'peak MiB':>8}"
    lines = [head]
    for name, runs in settings.items():
        trained = bool(runs[0]["result"].get("train"))
        loss = f"{spread(runs, 'train_loss').mean:.3f}" if trained else "-"
        line = (
            f"{name:<34} {len(runs):>5} {runs[0]['result']['parameters']['trainable']:>11,} {loss:>10} "
            f"{spread(runs, 'test_loss').format():>21} {spread(runs, 'token_accuracy').mean:>9.1%} "
            f"{spread(runs, 'exact_match').format('{:.0%}'):>19}"
        )
        if timing:
            tps = f"{spread(runs, 'tokens_per_s').mean:.0f}" if trained else "-"
            line += f" {tps:>8} {spread(runs, 'peak_memory_bytes').high / 2**20:>8.0f}"
        lines.append(line)
    return "\n".join(lines)
