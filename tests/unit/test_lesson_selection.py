"""The knob that picks which lessons the browser test and the Colab stand-in run."""

from __future__ import annotations

from pathlib import Path

import pytest
from lesson_selection import selected_lessons  # tests/helpers is on sys.path (tests/conftest.py)

from lora101.colab import raw_url

LESSONS = [Path(f"lessons/0{i}_x.ipynb") for i in range(1, 7)]


def test_default_list_all_and_none(monkeypatch):
    monkeypatch.delenv("KNOB", raising=False)
    assert selected_lessons(LESSONS, "KNOB", "01,05") == [LESSONS[0], LESSONS[4]]
    monkeypatch.setenv("KNOB", "all")
    assert selected_lessons(LESSONS, "KNOB", "01") == LESSONS
    monkeypatch.setenv("KNOB", " 03 , 06 ")
    assert selected_lessons(LESSONS, "KNOB", "01") == [LESSONS[2], LESSONS[5]]
    monkeypatch.setenv("KNOB", "")
    assert selected_lessons(LESSONS, "KNOB", "01") == []


def test_a_lesson_that_does_not_exist_is_named(monkeypatch):
    monkeypatch.setenv("KNOB", "01,09")
    with pytest.raises(ValueError, match=r"KNOB='01,09': no lesson numbered \['09'\]"):
        selected_lessons(LESSONS, "KNOB", "01")


def test_stored_results_follow_the_repository():
    assert (
        raw_url("lessons/results", "me/fork", "dev")
        == "https://raw.githubusercontent.com/me/fork/dev/lessons/results"
    )
