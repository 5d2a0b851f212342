"""Grading a class in parallel (``--jobs N``) and in shards across machines (``--shard K/M``).

nbgrader's SQLite gradebook must not be written by two processes at once, so each worker process grades
into a grading folder of its own (``OUT/.workers/worker-PID/``: a copy of ``OUT``'s ``source/``,
``release/`` and ``gradebook.db``, so a regraded learner's manual grades travel with it) with nbgrader's
own API, exactly as a serial run does; when all are done, the main process alone merges the workers'
gradebook rows and folders into ``OUT`` (``lora101.grading.merge``, the code ``lora101 grade-merge`` runs
for shards graded on other machines). Workers take submissions from a shared queue one at a time, so a
slow submission (an infinite loop waiting for its timeout) does not hold up the others.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm.auto import tqdm

from lora101.grading.config import Options, api_for
from lora101.grading.merge import merge_folder, submissions_in
from lora101.grading.one import grade_one, write_status

WORKERS = ".workers"
_WORKER: dict = {}  # this worker process's grading folder and nbgrader API


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/M"`` -> (K, M), 1 <= K <= M."""
    try:
        k, m = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/M, for example 1/3") from None
    if not 1 <= k <= m:
        raise ValueError(f"--shard {text!r}: K must be between 1 and M")
    return k, m


def select_shard(
    found: dict[tuple[str, str], list[Path]], k: int, m: int
) -> dict[tuple[str, str], list[Path]]:
    """Shard K of M: the students ranked K, K+M, K+2M... in name order, with all their assignments.

    Every machine must see the same SUBMISSIONS_DIR so that the M shards cover the class exactly once."""
    students = sorted({student for student, _ in found})
    mine = set(students[k - 1 :: m])
    return {key: notebooks for key, notebooks in found.items() if key[0] in mine}


def _start_worker(out: Path, options: Options) -> None:
    folder = out / WORKERS / f"worker-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("source", "release"):
        if (out / name).is_dir():
            shutil.copytree(out / name, folder / name)
    shutil.copy2(out / "gradebook.db", folder / "gradebook.db")
    _WORKER.update(folder=folder, options=options, api=api_for(folder, **options.api_kwargs()))


def _grade_in_worker(item: tuple[tuple[str, str], list[Path]]) -> tuple[str, str, str, list[str]]:
    (student, assignment), notebooks = item
    lines: list[str] = []
    api, folder = _WORKER["api"], _WORKER["folder"]
    grade_one(api, folder, student, assignment, notebooks, lines.append, _WORKER["options"].sandbox)
    return str(folder), student, assignment, lines


def _run_pool(out: Path, items: list, jobs: int, options: Options, log) -> tuple[dict, list]:
    """Grade ``items`` in a pool of ``jobs`` workers; returns (worker folder -> graded pairs, items whose
    worker died). A worker that dies (killed, out of memory) breaks the pool: what it was grading and
    what was still queued come back to be tried again."""

    # spawn, not fork: the parent has nbgrader, zmq and SQLAlchemy loaded, none of them safe to fork.
    context = multiprocessing.get_context("spawn")
    attempted: dict[str, list[tuple[str, str]]] = defaultdict(list)
    lost = []
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_start_worker, initargs=(out, options)
    ) as pool:
        futures = {pool.submit(_grade_in_worker, item): item for item in items}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"grading ({jobs} jobs)"):
            try:
                folder, student, assignment, lines = future.result()
            except BrokenProcessPool:
                lost.append(futures[future])
                continue
            for line in lines:
                log(line)
            attempted[folder].append((student, assignment))
    return attempted, lost


def grade_in_parallel(out: Path, todo: dict, jobs: int, options: Options, stamp: str, log) -> None:
    """Grade ``todo`` ((student, assignment) -> notebooks) with ``jobs`` worker processes, then merge their
    results into ``out`` (whose gradebook already knows the assignments). Submissions whose worker died are
    tried once more one at a time; one that kills its worker again fails alone, with that reason."""
    attempted, lost = _run_pool(out, sorted(todo.items()), jobs, options, log)
    for item in lost:
        more, lost_again = _run_pool(out, [item], 1, options, log)
        for folder, pairs in more.items():
            attempted[folder].extend(pairs)
        for (student, assignment), _ in lost_again:
            why = "the grading worker process died while grading this submission (twice)"
            log(f"  {student}/{assignment} failed: {why}")
            write_status(
                out, student, assignment, status="failed", reason=why, sandboxed=options.sandbox, review=[]
            )
    log(f"merging {len(attempted)} workers' gradebooks into {out / 'gradebook.db'}")
    for folder, pairs in sorted(attempted.items()):
        graded = submissions_in(Path(folder))
        merge_folder(Path(folder), out, sorted(p for p in pairs if p in graded), stamp, log)
    shutil.rmtree(out / WORKERS)
