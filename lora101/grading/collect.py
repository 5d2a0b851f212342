"""Finding a class's submissions, forgiving the ordinary mistakes and refusing the suspicious ones.

Layouts: ``SUBMISSIONS_DIR/STUDENT/ASSIGNMENT/NOTEBOOK.ipynb`` or ``SUBMISSIONS_DIR/STUDENT/NOTEBOOK.ipynb``.

- A renamed notebook (``01_memory-Copy1.ipynb``, ``01_memory (1).ipynb``) is graded under the name the
  assignment expects when nothing of that name is there; with both, the exact name wins and the copy is
  named in the log.
- A notebook both in ``STUDENT/ASSIGNMENT/`` and flat in ``STUDENT/``: the one in the folder is graded and
  the flat copy is named in the log.
- Refused, each with one line naming the student and what to fix: a symbolic link anywhere in a
  submission (a link could point at another student's work or the instructor's files), a student folder
  whose name holds characters nbgrader treats as a pattern (``* ? [ ]``) or a path separator.

- A graded cell pasted twice (the same nbgrader ``grade_id`` on two cells): the first keeps it, the copies
  become ordinary cells, and the log names them. A notebook whose nbgrader metadata was stripped (copied
  into a new notebook) gets it back from the source cell by cell when its cells still line up with the
  source's; otherwise it is graded as far as nbgrader can, and the log says what to fix.

Every accepted notebook is copied (contents only) into a folder private to the grader before anything
else happens, so a later change to ``SUBMISSIONS_DIR`` cannot change what is graded.
"""

from __future__ import annotations

import copy
import re
import shutil
import uuid
import warnings
from pathlib import Path

BAD_NAME = re.compile(r"[*?\[\]\\/]|^\.")
COPY_SUFFIX = re.compile(r"(-Copy\d*| \(\d+\)| copy\d*|-checkpoint)$", re.IGNORECASE)


def expected_notebooks(course: Path, names: list[str]) -> dict[str, list[str]]:
    """assignment -> the notebook stems its ``source/`` folder holds."""
    return {a: sorted(p.stem for p in (course / "source" / a).glob("*.ipynb")) for a in names}


def _has_link(folder: Path) -> bool:
    return folder.is_symlink() or any(p.is_symlink() for p in folder.rglob("*"))


def _match(stem: str, expected: list[str]) -> str | None:
    """The expected notebook stem that ``stem`` is (exactly, or as a copy of it)."""
    if stem in expected:
        return stem
    base = COPY_SUFFIX.sub("", stem)
    return base if base in expected else None


def _pick(candidates: list[Path], expected: list[str], who: str, log) -> dict[str, Path]:
    """expected stem -> the notebook graded for it (exact names before copies)."""
    chosen: dict[str, Path] = {}
    for nb in sorted(candidates, key=lambda p: (_match(p.stem, expected) != p.stem, p.name)):
        stem = _match(nb.stem, expected)
        if stem is None:
            continue
        if stem in chosen:
            log(f"{who}: {nb.name} ignored ({chosen[stem].name} is graded for {stem}.ipynb)")
        else:
            chosen[stem] = nb
            if nb.stem != stem:
                log(f"{who}: {nb.name} graded as {stem}.ipynb (rename it next time)")
    return chosen


def _student(student: Path, expected: dict[str, list[str]], log) -> dict[str, dict[str, Path]]:
    found: dict[str, dict[str, Path]] = {}
    flat = [p for p in student.iterdir() if p.is_file() and p.suffix == ".ipynb"]
    for assignment, stems in expected.items():
        folder = student / assignment
        inside = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
        here = [p for p in flat if _match(p.stem, stems) or _match(p.stem, [assignment])]
        if inside and here:
            log(f"{student.name}: {', '.join(p.name for p in here)} ignored ({assignment}/ is graded)")
        if inside:
            picked = _pick(inside, stems, f"{student.name}/{assignment}", log)
        else:
            picked = _pick([p for p in here if _match(p.stem, stems)], stems, student.name, log)
            if not picked and len(stems) == 1:  # STUDENT/ASSIGNMENT.ipynb for a one-notebook assignment
                picked = _pick(
                    [p for p in here if _match(p.stem, [assignment])], [assignment], student.name, log
                )
                picked = dict(zip(stems, picked.values(), strict=False))
        if picked:
            found[assignment] = picked
    return found


def _grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _copy_repaired(path: Path, source: Path, target: Path, who: str, log) -> None:
    """Copy notebook ``path`` to ``target``, mending the two metadata accidents nbgrader cannot grade."""
    import nbformat  # here, not at the top: it takes a while to import and ``lora101 --help`` needs none

    try:
        # a pasted cell repeats its cell id; nbformat warns, and the ids are mended below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nb = nbformat.read(path, as_version=4)
    except Exception as err:  # not JSON, not a notebook: nbgrader will say so; keep the file as it is
        log(f"{who}: {path.name} is not a readable notebook ({type(err).__name__}): grading it as it is")
        shutil.copyfile(path, target)
        return
    ids: set[str] = set()
    for cell in nb.cells:
        if cell.get("id") in ids:
            cell["id"] = uuid.uuid4().hex[:8]
        ids.add(cell.get("id"))
    seen: set[str] = set()
    for index, cell in enumerate(nb.cells):
        grade_id = _grade_id(cell)
        if grade_id and grade_id in seen:
            del cell.metadata["nbgrader"]
            log(f"{who}: cell {index} repeats graded cell {grade_id!r}: the first one is graded")
        elif grade_id:
            seen.add(grade_id)
    if not seen:
        _restore_metadata(nb, nbformat.read(source, as_version=4), who, log)
    nbformat.write(nb, target)


def _restore_metadata(nb, source, who: str, log) -> None:
    """A notebook with no nbgrader metadata at all: take it from ``source`` if the cells line up."""
    if [c.cell_type for c in nb.cells] != [c.cell_type for c in source.cells]:
        log(
            f"{who}: the notebook has lost its nbgrader metadata and its cells no longer match the handout: "
            "ask the student to paste their answers into a fresh copy of the handout"
        )
        return
    for cell, original in zip(nb.cells, source.cells, strict=True):
        if "nbgrader" in original.metadata:
            cell.metadata["nbgrader"] = copy.deepcopy(original.metadata["nbgrader"])
    log(f"{who}: the notebook had lost its nbgrader metadata: restored from the handout, cell by cell")


def collect(submissions: Path, course: Path, names: list[str], private: Path, log) -> dict:
    """(student, assignment) -> notebooks copied into ``private``, named as the assignment expects."""
    if not submissions.is_dir():
        raise ValueError(f"SUBMISSIONS_DIR {submissions} is not a folder")
    expected = expected_notebooks(course, names)
    found: dict[tuple[str, str], list[Path]] = {}
    for student in sorted(p for p in submissions.iterdir() if not p.name.startswith(".")):
        if BAD_NAME.search(student.name):
            log(f"refused {student.name!r}: a student folder name may not hold * ? [ ] or slashes: rename it")
            continue
        if _has_link(student):
            log(f"refused {student.name}: the submission holds a symbolic link: submit the files themselves")
            continue
        if not student.is_dir():
            continue
        for assignment, notebooks in _student(student, expected, log).items():
            target = private / student.name / assignment
            target.mkdir(parents=True)
            for stem, nb in notebooks.items():
                source = course / "source" / assignment / f"{stem}.ipynb"
                _copy_repaired(nb, source, target / f"{stem}.ipynb", f"{student.name}/{assignment}", log)
            found[(student.name, assignment)] = sorted(target.glob("*.ipynb"))
    if not found:
        raise ValueError(
            f"no submissions found in {submissions}: expected STUDENT/ASSIGNMENT/NOTEBOOK.ipynb "
            f"with ASSIGNMENT one of {names}"
        )
    return found
