"""Made-up (prompt, answer) pairs the fine-tune tests train on: cheap to learn, impossible to answer without
learning them, so a falling loss on them is the adapter's doing."""

from __future__ import annotations

import json
from pathlib import Path

CODE_WORDS = [
    ("apple", "ZEBRA-7"),
    ("river", "QUARTZ-2"),
    ("cloud", "MANGO-9"),
    ("stone", "VIOLET-4"),
    ("train", "ORBIT-1"),
    ("piano", "LEMON-5"),
    ("tiger", "COMET-3"),
    ("glass", "BISON-8"),
]
PAIRS = [(f"Code word for {word}?", code) for word, code in CODE_WORDS]


def write_jsonl(path: Path, pairs=PAIRS) -> Path:
    """``pairs`` as the prompt/response JSONL that ``lora101 finetune --data`` reads."""
    path.write_text(
        "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs), encoding="utf-8"
    )
    return path
