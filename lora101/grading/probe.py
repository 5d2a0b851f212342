"""Signs that a submission tampered with its own tests: run in the student's kernel before each test cell.

``fingerprint()`` (evaluated in the kernel as a ``user_expressions`` entry, which IPython evaluates
without passing it through input transformers, so a transformer that blanks cells cannot blank it) says
which input and AST transformers are installed, which event callbacks, which objects the common builtins
are, which modules ``sys.modules`` holds for the course and what the ``lora101.checks`` functions' code is.
The grader compares each fingerprint with the one taken before the first cell ran; a difference flags the
submission for review with the reason (``differences``). ``suspicious_source`` reads an answer cell's
source on the grader's side for the same tricks, which a kernel cannot hide.

A determined attacker can fool any check that runs in their own process; these checks are there so that
the obvious ways of passing tests without answers are seen by the instructor, not so that review is never
needed. The sandbox (``lora101.grading.sandbox``) is what protects the grades of everyone else.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import sys

EXPRESSION = "__import__('lora101.grading.probe', fromlist=['fingerprint']).fingerprint()"
BUILTINS = (
    "AssertionError",
    "Exception",
    "__import__",
    "abs",
    "all",
    "any",
    "compile",
    "eval",
    "exec",
    "float",
    "getattr",
    "hasattr",
    "id",
    "int",
    "isinstance",
    "len",
    "max",
    "min",
    "open",
    "print",
    "range",
    "repr",
    "round",
    "setattr",
    "str",
    "sum",
    "type",
)
WATCHED_MODULES = ("builtins", "sys", "math", "numpy", "torch", "importlib", "lora101", "lora101.checks")
# Tricks an answer cell has no business using: each is named in the review reason.
SUSPICIOUS = {
    r"input_transformers|input_transformer_manager": "IPython input transformers",
    r"ast_transformers": "IPython AST transformers",
    r"\bevents\.register\b|register_magic": "IPython event hooks or magics",
    r"\bbuiltins\b|__builtins__": "the builtins module",
    r"sys\.modules": "sys.modules",
    r"settrace|setprofile|_getframe|f_back|f_globals": "frames or tracing",
    r"\bctypes\b|\bgc\.get_referrers\b": "interpreter internals",
    r"\bos\.kill\b|\bsignal\.signal\b|\bkillpg\b": "signals",
    r"\b_ih\b|\b_oh\b|\bIn\[": "the history of executed cells (where the test code is)",
}


def _name(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _ipython_part(ip) -> dict:
    if ip is None:
        return {}
    manager = ip.input_transformer_manager
    callbacks = {event: [_name(f) for f in fs] for event, fs in ip.events.callbacks.items()}
    return {
        "cleanup": [_name(t) for t in ip.input_transformers_cleanup],
        "post": [_name(t) for t in ip.input_transformers_post],
        "ast": [_name(t) for t in ip.ast_transformers],
        "manager": [_name(t) for t in (*manager.cleanup_transforms, *manager.line_transforms)],
        "events": callbacks,
        "run_cell": _name(type(ip).run_cell),
        "showtraceback": _name(getattr(ip.showtraceback, "__func__", ip.showtraceback)),
        "displayhook": [_name(type(ip.displayhook)), _name(sys.displayhook)],
    }


def _checks_code() -> dict:
    checks = sys.modules.get("lora101.checks")
    if checks is None:
        return {}
    return {
        name: hashlib.sha256(f.__code__.co_code).hexdigest()[:16]
        for name, f in sorted(vars(checks).items())
        if callable(f) and hasattr(f, "__code__") and getattr(f, "__module__", "") == "lora101.checks"
    }


def fingerprint() -> str:
    """A JSON summary of what a test cell relies on (see the module's docstring)."""

    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        ip = None
    found = {
        "ipython": _ipython_part(ip),
        "builtins": {
            n: f"{_name(getattr(builtins, n, None))}@{id(getattr(builtins, n, None))}" for n in BUILTINS
        },
        "modules": {
            m: f"{id(sys.modules[m])}:{getattr(sys.modules[m], '__file__', '')}"
            for m in WATCHED_MODULES
            if m in sys.modules
        },
        "checks": _checks_code(),
        "trace": [_name(sys.gettrace()), _name(sys.getprofile())]
        if sys.gettrace() or sys.getprofile()
        else [],
    }
    return json.dumps(found, sort_keys=True)


def differences(before: dict, after: dict) -> list[str]:
    """Readable reasons for what changed between two fingerprints (modules imported later are fine)."""
    reasons = []
    for key in ("cleanup", "post", "ast", "manager", "run_cell", "showtraceback", "displayhook", "events"):
        if before.get("ipython", {}).get(key) != after.get("ipython", {}).get(key):
            reasons.append(f"IPython's {key} changed: {after.get('ipython', {}).get(key)}")
    for name, value in after.get("builtins", {}).items():
        if before.get("builtins", {}).get(name) != value:
            reasons.append(f"builtins.{name} was replaced")
    for name, value in after.get("modules", {}).items():
        if name in before.get("modules", {}) and before["modules"][name] != value:
            reasons.append(f"sys.modules[{name!r}] was replaced")
    old_checks = before.get("checks") or {}
    for name, code in (after.get("checks") or {}).items():
        if name in old_checks and old_checks[name] != code:
            reasons.append(f"lora101.checks.{name} was patched")
    if after.get("trace") and not before.get("trace"):
        reasons.append(f"a trace or profile function was installed: {after['trace']}")
    return reasons


def suspicious_source(source: str) -> list[str]:
    """What an answer cell's source reaches for that an answer does not need."""
    return [why for pattern, why in SUSPICIOUS.items() if re.search(pattern, source)]
