"""lora101.decision: the decision path, branch by branch, and its agreement with lesson 1's memory predictor."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from lora101.decision import ROUTES, TRAINING, Situation, decide, memory_needed
from lora101.memory import PRESETS, estimate_memory

BASE = dict(n_params=7e9, gpu_memory_gb=12)


def _step_gb(decision, prefix: str) -> float:
    """The GB figure of the step that starts with ``prefix``."""
    (step,) = [s for s in decision.steps if s.startswith(prefix)]
    return float(re.search(r"needs ([0-9.e+]+) GB", step).group(1))


@pytest.mark.parametrize("model", ["Llama-2-7B", "Llama-2-13B", "Llama-2-70B", 3e9])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_is_lesson_1s_prediction(model, checkpointing):
    """Every GB the path prints is estimate_memory's total at lesson 1's table settings, to 3 figures."""
    s = Situation(n_params=model, gpu_memory_gb=1e4, many_variants=True, gradient_checkpointing=checkpointing)
    d = replace(s, gpu_memory_gb=1.0)  # nothing fits: every memory step is printed
    decision = decide(d)
    assert decision.route == "smaller_model"
    for method, prefix in (("full", "full fine-tuning"), ("lora", "LoRA on"), ("qlora", "QLoRA on")):
        want = (
            estimate_memory(
                model,
                method,
                batch_size=1,
                seq_len=2048,
                gradient_checkpointing=checkpointing,
                master_weights=(method == "full"),
                **TRAINING,
            ).total
            / 1e9
        )
        assert memory_needed(s)[method].total / 1e9 == pytest.approx(want, rel=1e-12)
        assert _step_gb(decision, prefix) == pytest.approx(want, rel=5e-3)


def test_lesson_1s_7b_qlora_figures():
    """Lesson 1's Llama-2-7B QLoRA (r=16, all linear, 1 x 2048): about 14.9 GB, 5.7 GB with checkpointing;
    the old weights-only rule (4.33 GB) is gone."""
    off = decide(n_params="Llama-2-7B", gpu_memory_gb=1.0, gradient_checkpointing=False)
    on = decide(n_params="Llama-2-7B", gpu_memory_gb=1.0)
    assert _step_gb(off, "QLoRA") == pytest.approx(14.9, abs=0.05)
    assert _step_gb(on, "QLoRA") == pytest.approx(5.72, abs=0.01)
    assert (
        _step_gb(on, "QLoRA") > PRESETS["Llama-2-7B"].linear_params * 4.127 / 8 / 1e9
    )  # more than the 4-bit weights


def test_12_gb_and_7b_is_qlora_only_with_checkpointing():
    d = decide(**BASE)
    assert d.route == "qlora"
    assert d.steps[-1].startswith("QLoRA on the 4-bit base") and d.steps[-1].endswith("fits")
    assert (
        decide(**BASE, gradient_checkpointing=False).route == "smaller_model"
    )  # 15 GB of activations and weights


def test_batch_size_and_length_move_the_route():
    """Activations grow with batch x tokens: what fits at batch 1 need not fit at batch 8."""
    assert decide(n_params="Llama-2-7B", gpu_memory_gb=24).route == "lora"
    assert decide(n_params="Llama-2-7B", gpu_memory_gb=24, batch_size=16).route == "qlora"
    short = decide(n_params="Llama-2-7B", gpu_memory_gb=24, batch_size=16, seq_len=256)
    assert short.route == "lora"


@pytest.mark.parametrize(
    "flag, value, route",
    [
        ("prompting_good_enough", True, "prompting"),
        ("task_boundary_clear", False, "clarify"),
        ("base_is_strong", False, "better_base"),
        ("needs_new_knowledge", True, "retrieval"),
        ("data_is_good", False, "fix_data"),
    ],
)
def test_questions_before_memory(flag, value, route):
    d = decide(**BASE, **{flag: value})
    assert d.route == route and d.steps[-1].endswith(": no" if route != "prompting" else ": yes")


def test_order_of_the_questions():
    """Earlier questions win: prompting before clarity before the base before knowledge before data."""
    bad = dict(
        prompting_good_enough=True,
        task_boundary_clear=False,
        base_is_strong=False,
        needs_new_knowledge=True,
        data_is_good=False,
    )
    expected = ["prompting", "clarify", "better_base", "retrieval", "fix_data", "qlora"]
    for key, route in zip([*bad, None], expected, strict=True):
        assert decide(**BASE, **bad).route == route
        if key is not None:
            bad[key] = not bad[key]


def test_memory_boundaries_fit_means_at_most():
    s = Situation(n_params="Llama-2-7B", gpu_memory_gb=100)
    need = {m: b.total / 1e9 for m, b in memory_needed(s).items()}
    assert need["full"] > need["lora"] > need["qlora"]
    assert decide(replace(s, gpu_memory_gb=need["lora"])).route == "lora"
    assert decide(replace(s, gpu_memory_gb=need["lora"] * 0.999)).route == "qlora"
    assert decide(replace(s, gpu_memory_gb=need["full"], want_full_capacity=True)).route == "full"
    assert decide(replace(s, gpu_memory_gb=need["full"] * 0.999, want_full_capacity=True)).route == "lora"
    assert decide(n_params="Llama-2-70B", gpu_memory_gb=24).route == "smaller_model"


def test_tight_fits_are_flagged():
    s = Situation(n_params="Llama-2-7B", gpu_memory_gb=100)
    lora = memory_needed(s)["lora"].total / 1e9
    assert "tight" in decide(replace(s, gpu_memory_gb=lora + 0.5)).steps[-1]
    assert decide(replace(s, gpu_memory_gb=lora + 2)).steps[-1].endswith(": fits")


def test_small_model_rule():
    """Under 1B parameters full fine-tuning is the simpler choice, when it fits and one variant is needed."""
    small = dict(n_params="SmolLM2-135M", gpu_memory_gb=8)
    d = decide(**small)
    assert d.route == "full" and "0.135B < 1B" in d.steps[-1]
    assert decide(**small, many_variants=True).route == "lora"
    full = memory_needed(Situation(**small))["full"].total / 1e9
    assert decide(n_params="SmolLM2-135M", gpu_memory_gb=full * 0.99).route == "lora"  # full FT does not fit
    assert decide(n_params=2e9, gpu_memory_gb=80).route == "lora"  # 2B is not small


def test_explain_lists_every_step_and_the_route():
    d = decide(**BASE)
    text = d.explain()
    assert text.splitlines()[0] == "1. prompting is good enough: no"
    assert text.endswith(f"-> qlora: {ROUTES['qlora']}") and len(text.splitlines()) == len(d.steps) + 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_params=0, gpu_memory_gb=8), "n_params must be a parameter count"),
        (dict(n_params="Llama-7B", gpu_memory_gb=8), "n_params: 'Llama-7B' is not a preset"),
        (dict(n_params=1e9, gpu_memory_gb=-1), "gpu_memory_gb must be a positive number"),
        (dict(n_params=1e9, gpu_memory_gb=8, batch_size=0), "batch_size must be a positive int"),
        (dict(n_params=1e9, gpu_memory_gb=8, seq_len=512.0), "seq_len must be a positive int"),
        (dict(n_params=1e9, gpu_memory_gb=8, data_is_good="yes"), "data_is_good must be True or False"),
    ],
)
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
    assert capsys.readouterr().out.endswith(
        f"-> qlora: {ROUTES['qlora']}\n"
    )  # 7B on 12 GB, drawn at creation
    controls["gpu_memory_gb"].value = 80  # the bf16 base fits
    assert capsys.readouterr().out.endswith(f"-> lora: {ROUTES['lora']}\n")
    controls["gradient_checkpointing"].value = False
    controls["batch_size"].value = 32  # 32 x 2048 tokens of activations: not even QLoRA fits in 80 GB
    assert capsys.readouterr().out.endswith(f"-> smaller_model: {ROUTES['smaller_model']}\n")
    controls["base_is_strong"].value = False
    assert capsys.readouterr().out.endswith(f"-> better_base: {ROUTES['better_base']}\n")
