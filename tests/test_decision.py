"""lora101.decision: the seeds' decision path, branch by branch, and its agreement with exercise 5."""

from __future__ import annotations

import pytest

from lora101 import checks
from lora101.decision import ROUTES, Situation, decide, exercise_route, memory_needed_gb

BASE = dict(n_params=7e9, gpu_memory_gb=12)


def test_agrees_with_exercise_5_on_every_case():
    cases = checks.route_cases()
    assert len({checks.reference_route(c) for c in cases}) == 6  # the cases walk six different routes
    for c in cases:
        assert exercise_route(c) == checks.reference_route(c), c


def test_seed_002_example_is_qlora():
    """Seed 002: 12 GB and a larger (7B) model -> QLoRA."""
    d = decide(**BASE)
    assert d.route == "qlora"
    assert d.steps[-1].startswith("the NF4 base") and "fits" in d.steps[-1]


@pytest.mark.parametrize("flag, value, route", [
    ("prompting_good_enough", True, "prompting"),
    ("task_boundary_clear", False, "clarify"),
    ("base_is_strong", False, "better_base"),
    ("needs_new_knowledge", True, "retrieval"),
    ("data_is_good", False, "fix_data"),
])
def test_questions_before_memory(flag, value, route):
    d = decide(**BASE, **{flag: value})
    assert d.route == route and d.steps[-1].endswith(": no" if route != "prompting" else ": yes")


def test_order_of_the_questions():
    """Earlier questions win: prompting before clarity before the base before knowledge before data."""
    bad = dict(prompting_good_enough=True, task_boundary_clear=False, base_is_strong=False,
               needs_new_knowledge=True, data_is_good=False)
    expected = ["prompting", "clarify", "better_base", "retrieval", "fix_data", "qlora"]
    for key, route in zip([*bad, None], expected, strict=True):
        assert decide(**BASE, **bad).route == route
        if key is not None:
            bad[key] = not bad[key]


def test_memory_branches_and_boundaries():
    need = memory_needed_gb(7e9)
    assert need["full"] == pytest.approx(112) and need["lora"] == pytest.approx(16.8)
    assert decide(n_params=7e9, gpu_memory_gb=16.8).route == "lora"  # fits means <=
    assert decide(n_params=7e9, gpu_memory_gb=16.7).route == "qlora"
    assert decide(n_params=7e9, gpu_memory_gb=112, want_full_capacity=True).route == "full"
    assert decide(n_params=7e9, gpu_memory_gb=111, want_full_capacity=True).route == "lora"
    assert decide(n_params=70e9, gpu_memory_gb=24).route == "smaller_model"


def test_small_model_rule():
    """Seed 001: under 1B parameters full fine-tuning is the simpler choice, when it fits and one variant is needed."""
    small = dict(n_params=135e6, gpu_memory_gb=8)
    d = decide(**small)
    assert d.route == "full" and "135M" not in d.summary and "0.135B < 1B" in d.steps[-1]
    assert decide(**small, many_variants=True).route == "lora"
    assert decide(n_params=135e6, gpu_memory_gb=2).route == "lora"  # 2.16 GB for full FT does not fit in 2
    assert decide(n_params=1e9, gpu_memory_gb=80).route == "lora"  # 1B is not under 1B


def test_explain_lists_every_step_and_the_route():
    d = decide(**BASE)
    text = d.explain()
    assert text.splitlines()[0] == "1. prompting is good enough: no"
    assert text.endswith(f"-> qlora: {ROUTES['qlora']}") and len(text.splitlines()) == len(d.steps) + 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_params=0, gpu_memory_gb=8), "n_params must be a positive number"),
    (dict(n_params=1e9, gpu_memory_gb=-1), "gpu_memory_gb must be a positive number"),
    (dict(n_params=1e9, gpu_memory_gb=8, data_is_good="yes"), "data_is_good must be True or False"),
])
def test_bad_situations_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Situation(**kwargs)


def test_widget_has_a_control_for_every_question(capsys):
    from dataclasses import fields

    from lora101.widgets import decision_explorer

    widget = decision_explorer()
    names = {c._kwarg for c in widget.kwargs_widgets}
    assert names == {f.name for f in fields(Situation)} - {"n_params"} | {"n_params_b"}
    controls = {c._kwarg: c for c in widget.kwargs_widgets}
    assert capsys.readouterr().out.endswith(f"-> qlora: {ROUTES['qlora']}\n")  # 7B on 12 GB, drawn at creation
    controls["gpu_memory_gb"].value = 80  # the bf16 base fits
    assert capsys.readouterr().out.endswith(f"-> lora: {ROUTES['lora']}\n")
    controls["base_is_strong"].value = False
    assert capsys.readouterr().out.endswith(f"-> better_base: {ROUTES['better_base']}\n")
