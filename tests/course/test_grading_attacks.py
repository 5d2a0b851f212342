"""A class with hostile students, graded in the sandbox: nobody else's grade moves, grading finishes, no
hidden test reaches feedback, and the tricks that pass tests without answers are flagged for review.

Each attacker's answer cell runs its attack, then defines a correct answer, so a working attack would
show up as a changed grade, a leak or an unflagged full score. Honest learners are graded before and
after the attackers (in name order) and must keep full marks. Needs bubblewrap (``make test`` installs
it); without it the module skips, and in CI (``CI=true``) fails.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import nbformat
import pytest
from tiny_course import ANSWERS, HIDDEN_CODE, make_course, submission

from lora101.grading import grade
from lora101.grading.config import Options
from lora101.grading.sandbox import sandbox_problem

A = "a1_double"
TIMEOUT = 8

if sandbox_problem():
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"the grading sandbox is part of CI: {sandbox_problem()}")
    pytest.skip(f"no grading sandbox here: {sandbox_problem()}", allow_module_level=True)


def _rewrite_grades(db: Path) -> str:
    """Write the gradebook now, and from a process that outlives the kernel, a few seconds later."""
    write = f"import sqlite3; db = sqlite3.connect({str(db)!r}); db.execute('update grade set auto_score = 0'); db.commit()"
    return (
        "import subprocess, sys\n"
        f"later = {('import time; time.sleep(4); ' + write)!r}\n"
        "subprocess.Popen([sys.executable, '-c', later], start_new_session=True)\n"
        f"try:\n    exec({write!r})\n    print('wrote!')\n"
        "except Exception as err:\n    print('blocked', type(err).__name__)\n"
    )


def attacks(out: Path, subs: Path) -> dict[str, str]:
    """student -> code run in their answer cell before the (correct) answer."""
    db = out / "gradebook.db"
    return {
        "b_read_secrets": (
            "for path in [{db!r}, {src!r}, {other!r}, '/root/.bash_history', '/etc/shadow']:\n"
            "    try:\n        print(open(path, 'rb').read()[:200])\n"
            "    except OSError as err:\n        print('blocked', type(err).__name__)\n"
        ).format(db=str(db), src=str(out / "source" / A / f"{A}.ipynb"), other=str(subs / "a_honest")),
        "c_rewrite_grades": _rewrite_grades(db),
        "d_kill_grader": "import os, signal\nfor pid in (os.getppid(), 1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n",
        "e_blank_tests": "get_ipython().input_transformers_cleanup.append(lambda lines: [])\n",
        "f_patch_builtins": "import builtins\nbuiltins.abs = (lambda f: (lambda x: f(x)))(abs)\n",
        "g_fork_bomb": (
            "import os, time\nchildren = 0\n"
            "for _ in range(2000):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
            "    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n    children += 1\n"
            "print('forked', children)\n"
        ),
        "h_memory": "try:\n    hog = bytearray(3 * 2**30)\n    print('allocated 3 GiB!')\nexcept MemoryError:\n    print('MemoryError')\n",
        "i_flood": "print('x' * 5_000_000)\nfrom IPython.display import HTML, display\ndisplay(HTML('<script>alert(1)</script>'))\nopen('planted.html', 'w').write('<script>alert(2)</script>')\n",
        "j_ignore_sigint": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n",
        "k_quote_hidden": (
            "def _leak():\n    raise AssertionError(get_ipython().user_ns['_ih'][-1])\n"
            "print(get_ipython().user_ns['_ih'])\n"
        ),
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    course, subs, out = make_course(root / "course"), root / "subs", root / "out"
    students = {"a_honest": "", **attacks(out, subs), "z_honest": ""}
    for student, attack in students.items():
        nb = submission(A, "correct")
        nb.cells[1].source = attack + nb.cells[1].source
        if student == "k_quote_hidden":
            nb.cells[1].source = nb.cells[1].source.replace(
                "return 2 * x", "_leak() if x < 0 else None\n    return 2 * x"
            )
        (subs / student / A).mkdir(parents=True)
        nbformat.write(nb, subs / student / A / f"{A}.ipynb")
    limits = {"memory_bytes": 2**30, "processes": 64, "file_bytes": 2**20, "cpu_seconds": 120}
    options = Options(cell_timeout=TIMEOUT, limits=limits, budget=120)
    start = time.monotonic()
    lines: list[str] = []
    grade(subs, out, course, options=options, log=lines.append)
    elapsed = time.monotonic() - start
    time.sleep(6)  # longer than any delayed write an attacker scheduled
    with open(out / "scores.csv") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    return out, rows, elapsed, "\n".join(lines)


def _autograded_text(out: Path, student: str) -> str:
    """What the student's own cells printed when graded (the autograded notebook's outputs)."""
    nb = nbformat.read(out / "autograded" / student / A / f"{A}.ipynb", as_version=4)
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(
                str(output.get("text", "")) + str(output.get("data", "")) + str(output.get("evalue", ""))
            )
    return "\n".join(parts)


def test_honest_grades_survive_everyone(graded):
    out, rows, _, _ = graded
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        for student in ("a_honest", "z_honest"):
            assert gb.find_grade("test_answer", A, A, student).auto_score == 3.0, student
    assert rows["a_honest"]["review"] == "" and rows["z_honest"]["review"] == ""
    assert all(r["sandboxed"] == "yes" for r in rows.values())


def test_every_student_is_graded_and_it_finishes(graded):
    _, rows, elapsed, log = graded
    assert set(rows) >= {"a_honest", "z_honest", "d_kill_grader", "j_ignore_sigint"}, log
    assert all(r["status"] == "graded" for r in rows.values()), rows
    assert elapsed < 400, f"grading took {elapsed:.0f} s"


def test_nothing_secret_is_readable(graded):
    out, _, _, _ = graded
    text = _autograded_text(out, "b_read_secrets")
    assert text.count("blocked FileNotFoundError") + text.count("blocked PermissionError") == 5, text[:3000]
    assert "SQLite format" not in text and "BEGIN HIDDEN" not in text and "root:" not in text


def test_grades_cannot_be_rewritten_even_later(graded):
    out, rows, _, _ = graded
    assert "blocked" in _autograded_text(out, "c_rewrite_grades")
    assert rows["c_rewrite_grades"]["score"] == rows["a_honest"]["score"]


def test_tampering_with_ones_own_tests_is_flagged(graded):
    _, rows, _, _ = graded
    assert "input transformers" in rows["e_blank_tests"]["review"]
    assert "builtins.abs was replaced" in rows["f_patch_builtins"]["review"]
    assert "history of executed cells" in rows["k_quote_hidden"]["review"]


def test_limits_hold(graded):
    out, _, _, _ = graded
    forked = _autograded_text(out, "g_fork_bomb")
    count = int(forked.split("forked ")[1].split()[0])
    assert count < 64, f"{count} processes forked under a limit of 64"
    assert "MemoryError" in _autograded_text(out, "h_memory")


def test_sigint_ignoring_cell_is_killed(graded):
    out, _, _, _ = graded
    text = _autograded_text(out, "j_ignore_sigint")
    assert "ignored the interrupt" in text


def test_feedback_is_safe(graded):
    out, _, _, _ = graded
    for page in (out / "feedback").rglob("*.html"):
        html = page.read_text()
        assert HIDDEN_CODE not in html, page
        assert "<script>alert" not in html, page  # the answer's source shows it escaped, as code
        assert len(html) < 1_500_000, f"{page}: {len(html):,} bytes"
    assert not list((out / "feedback").rglob("planted.html"))


def test_unsandboxed_is_recorded(tmp_path):
    course, subs = make_course(tmp_path / "course"), tmp_path / "subs"
    (subs / "ada" / A).mkdir(parents=True)
    nbformat.write(submission(A, "correct"), subs / "ada" / A / f"{A}.ipynb")
    rows = grade(
        subs, tmp_path / "out", course, options=Options(cell_timeout=TIMEOUT, sandbox=False), log=print
    )
    assert rows[0]["sandboxed"].startswith("NO")
    assert list(ANSWERS)  # the tiny course is the one graded
