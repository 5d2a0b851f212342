"""lora101.fresh_process: a lora101 function run in a child process of its own, its result back through JSON,
its events streamed, a failure named by its label with the end of the child's stderr, nothing outside lora101
run. (The sweep's steps as events, for real: tests/integration/test_sweep.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lora101 import data, fresh_process


def _examples_file(tmp_path):
    path = tmp_path / "examples.jsonl"
    path.write_text(
        json.dumps({"prompt": "Extract: Ann pays Bo 5 EUR.", "response": '{"amount": 5}'})
        + "\n\n"
        + json.dumps({"prompt": "Extract: Bo pays Ann 7 USD.", "response": '{"amount": 7}'})
        + "\n"
    )
    return path


def test_a_child_process_runs_a_lora101_function_and_returns_its_result(tmp_path):
    path = _examples_file(tmp_path)
    result = fresh_process.run("lora101.data:read_jsonl", str(path), label="reading examples")
    assert result == data.read_jsonl(path)  # the same examples, through JSON
    assert [example["line"] for example in result] == [1, 3]


def test_a_failing_child_is_named_by_its_label_with_the_end_of_its_stderr(tmp_path):
    missing = tmp_path / "none.jsonl"
    with pytest.raises(fresh_process.ChildFailed) as failed:
        fresh_process.run("lora101.data:read_jsonl", str(missing), label="reading the missing file")
    err = failed.value
    assert err.label == "reading the missing file" and err.returncode == 1
    assert "Traceback" in err.stderr_tail and f"DataError: {missing}: no such file" in err.stderr_tail
    assert str(err).startswith("reading the missing file failed in its own process (exit status 1)")
    assert err.stderr_tail in str(err)
    with pytest.raises(fresh_process.ChildFailed, match="takes 1 positional argument but 2 were given"):
        # asked for events, the function is called with an emit it does not take
        fresh_process.run("lora101.data:read_jsonl", str(missing), label="events", on_event=print)


@pytest.mark.parametrize(
    "function_path",
    ["os:system", "json:loads", "lora101:main", "lora101x.data:read_jsonl", "lora101.data", "lora101.data:"],
)
def test_only_a_function_of_lora101_is_run(function_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no process may be started")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    with pytest.raises(ValueError, match="MODULE:FUNCTION with MODULE inside lora101"):
        fresh_process.run(function_path, {}, label="x")


def test_the_child_refuses_a_function_outside_lora101_too():
    child = [sys.executable, "-m", "lora101.fresh_process"]
    refused = subprocess.run([*child, "os:getcwd", "{}"], capture_output=True, text=True)
    assert refused.returncode == 1 and "inside lora101" in refused.stderr and not refused.stdout
    misused = subprocess.run([*child, "lora101.data:read_jsonl"], capture_output=True, text=True)
    assert misused.returncode == 2 and misused.stderr.startswith("usage: python -m lora101.fresh_process")


def test_event_lines_reach_on_event_in_order_and_other_lines_are_ignored():
    lines = ["EVENT 1\n", "some library's notice\n", 'EVENT {"step": 2}\n', "RESULT [3]\n", "EVENTS 4\n"]
    events = []
    assert fresh_process._read(lines, events.append) == (True, [3])
    assert events == [1, {"step": 2}]
    assert fresh_process._read(["RESULT null\n"], None) == (True, None)  # a result of None is a result
    assert fresh_process._read(["EVENT 1\n"], None) == (False, None)
