"""Build every explorer in lora101.widgets and move each of its controls; exits non-zero on any failure.

Run as a script by tests/course/test_colab_runtime.py inside the Colab stand-in (ipywidgets 7), and in-process by
tests/unit/test_widgets.py (ipywidgets 8). ipywidgets only logs an exception raised by an interactive callback, so
every callback is wrapped here and its exceptions are collected.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")


def explorers() -> dict:
    import torch

    from lora101 import widgets

    torch.manual_seed(0)
    made = {}
    for name in sorted(dir(widgets)):
        if not name.endswith("_explorer"):
            continue
        builder = getattr(widgets, name)
        if name == "quantization_explorer":
            made[name] = builder({"q.weight": torch.randn(64, 256), "v.weight": torch.randn(32, 256)})
        else:
            made[name] = builder()
    return made


def _another_value(control):
    options = getattr(control, "options", None)
    if options:
        values = [o[1] if isinstance(o, tuple) else o for o in options]
        return next(v for v in values if v != control.value)
    if isinstance(control.value, bool):
        return not control.value
    if hasattr(control, "max"):
        return control.max if control.value != control.max else control.min
    raise TypeError(f"no other value for {type(control).__name__}")


def check_all() -> list[str]:
    import matplotlib.pyplot as plt

    problems = []
    for name, widget in explorers().items():
        calls, errors = [], []
        original = widget.f

        def spy(*args, _original=original, calls=calls, errors=errors, **kwargs):
            calls.append(kwargs)
            try:
                return _original(*args, **kwargs)
            except Exception as error:  # collected and reported below
                errors.append(f"{type(error).__name__}: {error}")
                raise
            finally:
                plt.close("all")

        widget.f = spy
        controls = list(widget.kwargs_widgets)
        if not controls:
            problems.append(f"{name}: no controls")
        for control in controls:
            before = len(calls)
            control.value = _another_value(control)
            if len(calls) == before:
                problems.append(f"{name}: moving {control._kwarg!r} did not rerun the explorer")
            elif calls[-1][control._kwarg] != control.value:
                problems.append(
                    f"{name}: {control._kwarg!r} reached the explorer as {calls[-1][control._kwarg]!r}"
                )
        problems += [f"{name}: {e}" for e in errors]
        if hasattr(widget, "_repr_mimebundle_"):
            bundle = widget._repr_mimebundle_()
            if "application/vnd.jupyter.widget-view+json" not in bundle:
                problems.append(f"{name}: renders no widget view")
        elif not hasattr(widget, "_ipython_display_"):
            problems.append(f"{name}: cannot be displayed")
    return problems


if __name__ == "__main__":
    import ipywidgets

    found = check_all()
    for line in found:
        print(line)
    print(
        f"ipywidgets {ipywidgets.__version__}: {len(explorers())} explorers answered"
        if not found
        else "FAILED"
    )
    sys.exit(1 if found else 0)
