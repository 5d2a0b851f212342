"""Every explorer in lora101.widgets builds and answers when each control moves (ipywidgets of this venv;
tests/course/test_colab_runtime.py runs the same check with Colab's ipywidgets 7)."""

import widget_smoke


def test_every_explorer_answers_every_control():
    assert widget_smoke.check_all() == []


def test_the_check_sees_a_broken_explorer(monkeypatch):
    """A callback that raises is reported, not swallowed as ipywidgets would."""
    from lora101 import widgets

    def broken():
        import ipywidgets as w

        def show(x):
            raise ValueError("boom")

        return w.interactive(show, x=w.IntSlider(value=1, min=0, max=3))

    monkeypatch.setattr(widgets, "broken_explorer", broken, raising=False)
    problems = widget_smoke.check_all()
    assert any("broken_explorer" in p and "boom" in p for p in problems), problems
