"""The whole fine-tune in one function, :func:`run`: what ``lora101 finetune``, lesson 5, the sweeps and the
benchmark call.

The steps: check the output folder (nothing in it is lost; a resumed run is the same configuration), split
the batch over the processes, read the examples, tokenise them, build the base and its adapters, evaluate
before training, train (checkpoints every ``save_steps``), evaluate after, save the adapter, plot the loss
and write ``report.json``. Every check that can fail on bad input runs before the model is loaded and
before the output folder is created.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora101 import distributed
from lora101.data import DataError, load_splits, prompt_text, tokenize_examples
from lora101.doctor import installed_versions
from lora101.errors import Interrupted, OutputError
from lora101.evaluate import evaluate_model, score
from lora101.finetune.config import FinetuneConfig
from lora101.finetune.model import ADAPTER_FILES, add_lora, load_base, save_adapter
from lora101.finetune.training import TrainResult, last_checkpoint, resumable_checkpoint, train
from lora101.memory import peak_memory_bytes
from lora101.models import choose_device, load_tokenizer
from lora101.plots import loss_curve
from lora101.tasks import get_task

REPORT = "report.json"
BEFORE = "before.json"  # the base model's scores, kept so that a resumed run need not measure them again
CHECKPOINTS = "checkpoints"
# The configuration, written first beside the checkpoints: a resumed run must match it.
RUN_CONFIG = f"{CHECKPOINTS}/run_config.json"
# What a finished run leaves in its folder (PEFT writes a README.md beside the adapter).
FINISHED = {*ADAPTER_FILES, "README.md", REPORT, BEFORE, CHECKPOINTS, "loss.png"}


@dataclass
class Report:
    """What :func:`run` did: the trained model, its scores before and after, the training figures."""

    config: FinetuneConfig
    model: Any  # the PEFT model, trained, in eval mode
    tokenizer: Any
    train: TrainResult
    before: dict[str, Any] | None = None  # metrics of the untrained model (None when not evaluated)
    after: dict[str, Any] | None = None
    predictions: list[str] = field(default_factory=list)  # the trained model's answers to the held-out set
    held_out: list[dict] = field(default_factory=list)  # the held-out examples, in the form files give
    train_examples: int = 0
    output_dir: Path | None = None
    resumed_from: str | None = None  # the checkpoint a resumed run continued from
    measurements: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``report.json``: scores, five examples, the loss history, figures, configuration and versions."""
        examples = [
            {"prompt": ex["messages"][-1]["content"], "expected": ex["response"], "after": p}
            for ex, p in list(zip(self.held_out, self.predictions, strict=False))[:5]
        ]
        return {
            "before": self.before,
            "after": self.after,
            "examples": examples,
            "task": None if self.config.data else self.config.task,
            "train_examples": self.train_examples,
            "resumed_from": self.resumed_from,
            **self.measurements,
        }


def run(
    config: FinetuneConfig,
    data: tuple[list[dict], list[dict]] | None = None,
    *,
    evaluate: bool = True,
    model=None,
    output_dir=None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
) -> Report:
    """Run the fine-tune ``config`` describes and return its :class:`Report`.

    ``data``: (training, held-out) examples as ``{"messages": [...], "response": str, "line": int}`` (what
    :func:`lora101.data.read_jsonl` and :func:`lora101.data.task_examples` give); None reads them as
    ``config`` says. ``evaluate``: score the held-out examples with greedy generation before and after
    training (exact match and per-field accuracy, :func:`lora101.evaluate.evaluate_model`). ``model``: a
    model to train instead of building ``config``'s base + adapters. ``output_dir``: where the adapter,
    ``report.json``, ``loss.png`` and the checkpoints go (None: nothing is kept); it must be empty or new,
    except with ``overwrite`` (a finished run of the same configuration is replaced) or ``resume`` (an
    unfinished run of the same configuration continues from its newest intact checkpoint).

    Raises :class:`lora101.errors.UsageError` subclasses for bad input (before loading anything), and
    :class:`lora101.errors.Interrupted` on Ctrl-C, saying what was saved.
    """
    out = Path(output_dir) if output_dir is not None else None
    checkpoint = check_output(out, config, resume=resume, overwrite=overwrite)
    per_process = distributed.per_process_batch(config.batch_size)  # before any loading: fail fast
    train_ex, held_out = data if data is not None else _examples(config)
    tokenizer = load_tokenizer(config.model)
    train_ds = tokenize_examples(tokenizer, train_ex, _path(config.data), config.max_length)
    if evaluate and not held_out:
        raise DataError("no held-out examples to evaluate on: give some, or evaluate=False")
    if evaluate:  # the same length checks for the held-out examples, before anything is loaded
        tokenize_examples(tokenizer, held_out, _path(config.eval_data or config.data), config.max_length)
    start = time.perf_counter()
    # Under torchrun: join the other processes now; every one of them has checked the folder before any
    # process writes to it (rank 0 alone does).
    distributed.start(choose_device(config.device).type)
    with _folder(out, config, resume, overwrite) as folder:
        try:
            scored = held_out if evaluate else None
            report = _job(config, model, tokenizer, train_ds, scored, folder, checkpoint, callbacks, progress)
        except KeyboardInterrupt:
            raise Interrupted(*_what_was_saved(out, fresh=not resume)) from None
    report.train_examples, report.output_dir = len(train_ex), out
    report.measurements = _measurements(config, report.train, start, per_process)
    if out is not None and distributed.is_main_process():
        _write(report, out, progress)
    return report


def _job(
    config, model, tokenizer, train_ds, held_out, folder: Path, checkpoint, callbacks, progress
) -> Report:
    """Model, evaluation before (``held_out``: None for none), training, evaluation after: the part that
    runs in every process."""
    model = model if model is not None else build_model(config)
    scorer = _evaluator(config, model, tokenizer, held_out) if held_out is not None else None
    before = _before(folder, scorer, resumed=checkpoint is not None) if scorer else None
    distributed.wait_for_everyone()  # the others wait while rank 0 measures the untrained model
    result = train(
        model,
        tokenizer,
        train_ds,
        config,
        folder / CHECKPOINTS,
        callbacks=callbacks,
        resume=checkpoint or False,
        progress=progress,
    )
    report = Report(config, model, tokenizer, result, before=before, held_out=held_out or [])
    report.resumed_from = checkpoint.name if checkpoint else None
    if scorer and distributed.is_main_process():
        report.after, report.predictions = scorer("after")
        print(
            f"after:  exact match {report.after['exact_match']:.1%} on {report.after['n']} held-out examples"
        )
    return report


def build_model(config: FinetuneConfig):
    """``config``'s base (4-bit or full precision) with fresh LoRA adapters on its target modules."""
    base = load_base(config.model, config.precision, config.device)
    return add_lora(base, config.rank, config.alpha, config.targets, config.dropout)


# ------------------------------------------------------------------------------------------------
# The output folder: nothing in it is lost


def check_output(out: Path | None, config: FinetuneConfig, *, resume: bool, overwrite: bool) -> Path | None:
    """Check that ``out`` may take this run; returns the checkpoint to resume from (``resume``), else None.

    Raises :class:`lora101.errors.OutputError` for a folder holding anything but a finished run of the same
    configuration (which only ``overwrite`` replaces), and, with ``resume``, for a folder without an
    unfinished run of this configuration or without an intact checkpoint.
    """
    if out is None:
        if resume:
            raise OutputError("--resume needs --output: the folder of the run to continue")
        return None
    if out.exists() and not out.is_dir():
        raise OutputError(f"--output {out} is a file; give a folder (it is created if missing)")
    if resume:
        return _resumable(out, config)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return None
    finished = (out / REPORT).is_file() and set(entries) <= FINISHED
    if finished and overwrite and not _differences(out, config):
        return None
    raise OutputError(_refusal(out, config, entries, finished, overwrite))


def _refusal(out: Path, config: FinetuneConfig, entries: list[str], finished: bool, overwrite: bool) -> str:
    """Why ``out`` may not take a new run, and what to do instead."""
    elsewhere = "choose another folder with --output"
    if finished and overwrite:
        changed = "; ".join(_differences(out, config))
        return f"--overwrite: {out} holds a finished run of another configuration ({changed}); {elsewhere}"
    if finished:
        return (
            f"--output {out} already holds an adapter (a finished run); {elsewhere}, or pass --overwrite to "
            "replace it with a run of the same configuration (--resume continues only an unfinished run)"
        )
    if (out / RUN_CONFIG).is_file():
        return f"--output {out} holds an unfinished run: pass --resume to continue it, or {elsewhere}"
    if (out / ADAPTER_FILES[0]).is_file():
        return (
            f"--output {out} already holds an adapter; {elsewhere} (neither --resume nor --overwrite "
            "replaces an adapter that is not a finished run of lora101 finetune)"
        )
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return f"--output {out} is not empty ({shown}); {elsewhere}, or empty it first"


def _resumable(out: Path, config: FinetuneConfig) -> Path:
    """The checkpoint of ``out``'s unfinished run to continue from, after checking the run is this one."""
    if not (out / RUN_CONFIG).is_file():
        raise OutputError(
            f"--resume: {out} holds no run of lora101 finetune to continue ({RUN_CONFIG} is missing)"
        )
    if (out / REPORT).is_file():
        steps = _read_json(out / REPORT).get("steps")
        raise OutputError(
            f"--resume: {out} holds a finished run ({steps} steps): nothing to continue; to train longer, "
            "start a new run with more --steps in another --output"
        )
    changed = _differences(out, config)
    if changed:
        raise OutputError(
            f"--resume: {out} was trained with another configuration ({'; '.join(changed)}); give the same "
            "options, or start a new run in another --output"
        )
    checkpoint, skipped = resumable_checkpoint(out / CHECKPOINTS)
    for note in skipped:
        print(f"--resume: skipping {note}", flush=True)
    if checkpoint is None:
        raise OutputError(
            f"--resume: {out / CHECKPOINTS} holds no intact checkpoint to resume from; start the run again "
            "in another --output"
        )
    if skipped:
        print(f"--resume: continuing from {checkpoint.name}, the newest intact checkpoint", flush=True)
    damaged = [p for p in (out / CHECKPOINTS).glob("checkpoint-*") if _step(p) > _step(checkpoint)]
    for bad in damaged if distributed.is_main_process() else []:
        bad.rename(bad.with_name("damaged-" + bad.name))  # kept, but out of the Trainer's way
    return checkpoint


def _step(checkpoint: Path) -> int:
    tail = checkpoint.name.split("-")[-1]
    return int(tail) if tail.isdigit() else -1


def _differences(out: Path, config: FinetuneConfig) -> list[str]:
    saved = out / RUN_CONFIG
    return config.differences(_read_json(saved)) if saved.is_file() else ["no recorded configuration"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OutputError(f"{path} is unreadable ({type(err).__name__}); choose another --output") from None
    return value if isinstance(value, dict) else {}


@contextmanager
def _folder(out: Path | None, config: FinetuneConfig, resume: bool, overwrite: bool):
    """The run's folder: ``out`` (created, with the configuration recorded), or a temporary one."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="lora101-finetune-") as tmp:
            yield Path(tmp)
        return
    if distributed.is_main_process():
        if overwrite and not resume:  # a finished run of the same configuration, replaced
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            for name in (REPORT, BEFORE):
                (out / name).unlink(missing_ok=True)
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        (out / RUN_CONFIG).write_text(json.dumps(config.to_dict(), indent=2))
    yield out


def _what_was_saved(out: Path | None, fresh: bool) -> tuple[str, Path | None]:
    """What an interrupted run leaves: its newest checkpoint; without one, a fresh run's own files are removed
    again, so that the same command starts it afresh."""
    checkpoint = last_checkpoint(out / CHECKPOINTS) if out is not None else None
    if checkpoint is not None:
        return f"{checkpoint} is saved", checkpoint
    if out is not None and fresh and distributed.is_main_process():
        for name in (RUN_CONFIG, BEFORE):
            (out / name).unlink(missing_ok=True)
        for folder in (out / CHECKPOINTS, out):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return "nothing was saved (no checkpoint was written yet)", None


# ------------------------------------------------------------------------------------------------
# Data, evaluation, the report


def _path(name: str | None) -> Path | None:
    return Path(name) if name is not None else None


def _examples(config: FinetuneConfig) -> tuple[list[dict], list[dict]]:
    """(training, held-out) examples from ``config``'s JSONL files or built-in task."""
    return load_splits(
        _path(config.data),
        _path(config.eval_data),
        task=get_task(config.task) if config.data is None else None,
        train_size=config.train_size,
        eval_size=config.eval_size,
        eval_fraction=config.eval_fraction,
        seed=config.seed,
    )


def _evaluator(config: FinetuneConfig, model, tokenizer, held_out: list[dict]):
    """``evaluate(desc)`` -> (metrics, predictions) of ``model`` on the held-out examples, scored by the task's
    scorer (your own data: :func:`lora101.evaluate.score`)."""
    prompts = [prompt_text(tokenizer, ex["messages"]) for ex in held_out]
    refs = [ex["response"] for ex in held_out]
    scorer = get_task(config.task).score if config.data is None else score

    def evaluate(desc: str) -> tuple[dict[str, Any], list[str]]:
        # as lesson 5: fewer, larger batches cost less
        return evaluate_model(
            model,
            tokenizer,
            prompts,
            refs,
            scorer=scorer,
            desc=desc,
            max_new_tokens=config.max_new_tokens,
            batch_size=64,
        )

    return evaluate


def _before(folder: Path, evaluate, resumed: bool) -> dict[str, Any] | None:
    """The untrained model's scores: measured (and kept for a resumption), or read back when resuming."""
    if not distributed.is_main_process():
        return None
    if resumed and (folder / BEFORE).is_file():
        before = json.loads((folder / BEFORE).read_text())
    else:  # B = 0: the freshly wrapped model computes exactly what the base does
        before, _ = evaluate("before")
        (folder / BEFORE).write_text(json.dumps(before, indent=2))
    print(f"before: exact match {before['exact_match']:.1%} on {before['n']} held-out examples", flush=True)
    return before


def _measurements(
    config: FinetuneConfig, result: TrainResult, start: float, per_process: int
) -> dict[str, Any]:
    """The report's training figures, the machine's peak memory, the processes, configuration and versions."""
    device = choose_device(config.device)
    return {
        "steps": result.global_step,
        "loss": {"steps": result.steps, "values": result.losses},  # a resumed run's whole history
        "tokens": result.tokens,  # trained in this call: a resumed run counts only its own steps
        "tokens_per_s": result.tokens_per_s,
        "train_wall_s": result.wall_s,
        "wall_s": time.perf_counter() - start,
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "process peak RSS",
        "device": str(device),
        # torchrun / accelerate launch: tokens_per_s counts every process's tokens over rank 0's time;
        # peak memory is rank 0's alone (each process holds its own copy of the model)
        "world_size": result.world_size,
        "global_batch": per_process * result.world_size,
        "per_process_batch": per_process,
        "config": config.to_dict(),
        "versions": installed_versions(),
        "torch_threads": torch.get_num_threads(),
    }


def _write(report: Report, out: Path, progress: bool) -> None:
    """The adapter, ``loss.png`` and ``report.json`` into ``out`` (checked by :func:`check_output`)."""
    save_adapter(report.model, out, overwrite=True)
    result = report.train
    loss_curve(result.steps, result.losses, total_steps=report.config.steps).savefig(out / "loss.png", dpi=80)
    (out / REPORT).write_text(json.dumps(report.to_dict(), indent=2))
    if progress:
        print(f"wrote {out}: adapter, {REPORT}, loss.png ({result.tokens_per_s:.0f} tokens/s)")


__all__ = ["BEFORE", "REPORT", "RUN_CONFIG", "Report", "build_model", "check_output", "run"]
