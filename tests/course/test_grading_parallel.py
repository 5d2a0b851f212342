"""`lora101 grade --jobs 2`, and two `lora101 grade --shard K/2` runs merged by `lora101 grade-merge`, give
exactly the serial run's scores.csv and gradebook grades.

The class is tiny_course's: two learners x two assignments, one submission of each kind (correct, partial,
broken, hostile), so that the runs cannot agree by all scoring zero.
"""

from __future__ import annotations

import pytest
from nbgrader.api import Gradebook
from tiny_course import make_class, make_course

from lora101.cli import main
from lora101.grading import grade, grade_merge
from lora101.grading.config import Options
from lora101.grading.merge import db_url
from lora101.grading.parallel import parse_shard, select_shard

TIMEOUT = 5  # seconds a cell may run: the hostile submission's infinite loop waits this long


def _grades(folder) -> dict:
    """(student, assignment, notebook, cell) -> every score field of the gradebook, and the comments."""
    out = {}
    with Gradebook(db_url(folder)) as gb:
        for a in gb.assignments:
            for sub in a.submissions:
                for nb in sub.notebooks:
                    for g in nb.grades:
                        out[(sub.student.id, a.name, nb.name, g.name)] = (
                            g.auto_score,
                            g.manual_score,
                            g.extra_credit,
                            g.needs_manual_grade,
                            g.score,
                        )
                    for c in nb.comments:
                        out[(sub.student.id, a.name, nb.name, "comment:" + c.name)] = (
                            c.auto_comment,
                            c.manual_comment,
                        )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    course, subs = make_course(root / "course"), root / "subs"
    kinds = make_class(subs, 2)
    grade(subs, root / "serial", course, options=Options(cell_timeout=TIMEOUT), log=lambda line: None)
    grade(subs, root / "jobs2", course, options=Options(cell_timeout=TIMEOUT), jobs=2, log=lambda line: None)
    for k in (1, 2):  # through the command line, as an instructor on two machines would
        args = [
            "grade",
            str(subs),
            "--shard",
            f"{k}/2",
            "--out",
            str(root / f"shard{k}"),
            "--course",
            str(course),
        ]
        assert main([*args, "--timeout", str(TIMEOUT)]) == 0
    assert (
        main(
            [
                "grade-merge",
                str(root / "shard1"),
                str(root / "shard2"),
                "--out",
                str(root / "merged"),
                "--course",
                str(course),
            ]
        )
        == 0
    )
    return root, kinds


def test_serial_scores_are_the_honest_ones(runs):
    root, kinds = runs
    autograded = {
        "correct": 3.0,
        "partial": 0.0,
        "broken": 0.0,
        "hostile": 3.0,
    }  # hostile: right answer, test restored
    grades = _grades(root / "serial")
    assert {(s, a) for s, a, _, _ in grades} == set(kinds)
    for (student, a), kind in kinds.items():
        assert grades[(student, a, a, "test_answer")][0] == autograded[kind], (student, a, kind)
        # Every written answer awaits a hand grade, a blank one too (nbgrader alone would score it 0, unseen).
        assert grades[(student, a, a, "written")][3], (student, a, kind)


@pytest.mark.parametrize("run", ["jobs2", "merged"])
def test_parallel_and_sharded_runs_equal_the_serial_run(runs, run):
    root, kinds = runs
    assert (root / run / "scores.csv").read_bytes() == (root / "serial" / "scores.csv").read_bytes()
    assert _grades(root / run) == _grades(root / "serial")
    for student, a in kinds:
        for kind in ("submitted", "autograded", "feedback"):
            assert (root / run / kind / student / a).is_dir(), (run, kind, student, a)
    assert not (root / run / ".workers").exists(), "worker folders are removed after the merge"


def test_the_shards_split_the_class(runs):
    root, kinds = runs
    students = [{s for s, _, _, _ in _grades(root / f"shard{k}")} for k in (1, 2)]
    assert students[0] and students[1] and not students[0] & students[1]
    assert students[0] | students[1] == {s for s, _ in kinds}


def test_merging_again_keeps_hand_grades_and_sets_old_results_aside(runs):
    root, _ = runs
    merged = root / "merged"
    student = sorted(_grades(root / "shard1"))[0][0]
    a = sorted(a for s, a, _, _ in _grades(root / "shard1") if s == student)[0]
    with Gradebook(db_url(merged)) as gb:
        g = gb.find_grade("written", a, a, student)
        g.manual_score, g.needs_manual_grade = 1.5, False
        gb.db.commit()
    logs: list[str] = []
    rows = grade_merge([root / "shard1"], merged, root / "course", log=logs.append)
    assert any(f"feedback/{student}/{a}.backup-" in line for line in logs), logs
    assert _grades(merged)[(student, a, a, "written")][1] == 1.5, "the hand grade survives a second merge"
    assert (
        next(r for r in rows if (r["student"], r["assignment"]) == (student, a))["needs_manual_grade"]
        is False
    )
    with pytest.raises(ValueError, match="no gradebook.db"):
        grade_merge([root / "subs"], root / "elsewhere", root / "course")
    with pytest.raises(ValueError, match="is one of the shards"):
        grade_merge([root / "shard1", merged], merged, root / "course")


def test_shard_and_jobs_arguments_are_checked(tmp_path, capsys):
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(SystemExit):
        main(["grade", str(tmp_path), "--shard", "3/2"])
    assert "K must be between 1 and M" in capsys.readouterr().err
    found = {(s, "a"): [] for s in ("ann", "bob", "cy", "dee", "eve")}
    parts = [set(select_shard(found, k, 3)) for k in (1, 2, 3)]
    assert [len(p) for p in parts] == [2, 2, 1] and set().union(*parts) == set(found)
    with pytest.raises(ValueError, match="--jobs 0"):
        grade(tmp_path, tmp_path / "out", make_course(tmp_path / "course"), jobs=0)
