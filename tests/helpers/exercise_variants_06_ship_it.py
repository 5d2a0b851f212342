"""Wrong and right answers for exercise 6 (ship it): the label mask of a chat-formatted example.

Loaded by ``exercise_variants._load_more``; each wrong answer must lose the test cell's points, each right one keep them."""

_BASE = """def chat_labels(messages, max_length):
    input_ids, labels = [], []
    for i, message in enumerate(messages):
        header = ids("<|im_start|>" + message["role"] + "\\n")
        body = ids(message["content"] + "<|im_end|>")
        tail = ids("\\n")
        input_ids += header + body + tail
        learned = {learned}
        labels += {header_labels} + learned + [IGNORE] * len(tail)
    {check}
    return {{"input_ids": input_ids, "labels": labels}}"""
_GOOD = dict(
    learned='body if message["role"] == "assistant" else [IGNORE] * len(body)',
    header_labels="[IGNORE] * len(header)",
    check='if len(input_ids) > max_length:\n        raise ValueError("too long")',
)


def _labels(**changes):
    return _BASE.format(**{**_GOOD, **changes})


SHIP_IT = {
    "test_turns": {
        "answer": "answer_labels",
        "wrong": {
            "learns_prompt": _labels(learned="body"),
            "no_end_of_turn": _labels(
                learned='body[:-1] + [IGNORE] if message["role"] == "assistant" else [IGNORE] * len(body)'
            ),
            "last_turn_only": _labels(learned="body if i == len(messages) - 1 else [IGNORE] * len(body)"),
            "learns_header": _labels(
                header_labels='(header if message["role"] == "assistant" else [IGNORE] * len(header))'
            ),
        },
        "right": {
            "spans": "def chat_labels(messages, max_length):\n    pieces = []\n    for m in messages:\n"
            "        pieces += [(ids('<|im_start|>' + m['role'] + '\\n'), False),\n"
            "                   (ids(m['content'] + '<|im_end|>'), m['role'] == 'assistant'), (ids('\\n'), False)]\n"
            "    input_ids = [t for piece, _ in pieces for t in piece]\n"
            "    labels = [t if learn else IGNORE for piece, learn in pieces for t in piece]\n"
            "    if len(input_ids) > max_length:\n        raise ValueError(f'{len(input_ids)} > {max_length}')\n"
            "    return dict(input_ids=input_ids, labels=labels)",
            "mask_after": "def chat_labels(messages, max_length):\n    input_ids, learn = [], []\n    for m in messages:\n"
            "        for text, keep in (('<|im_start|>' + m['role'] + '\\n', False),\n"
            "                           (m['content'] + '<|im_end|>', m['role'] == 'assistant'), ('\\n', False)):\n"
            "            piece = ids(text)\n            input_ids.extend(piece)\n            learn.extend([keep] * len(piece))\n"
            "    if len(input_ids) > max_length:\n        raise ValueError('longer than max_length')\n"
            "    return {'input_ids': input_ids, 'labels': [t if k else -100 for t, k in zip(input_ids, learn)]}",
        },
    },
    "test_edges": {
        "answer": "answer_labels",
        "wrong": {
            "truncates": _labels(check="input_ids, labels = input_ids[:max_length], labels[:max_length]"),
            "strict_limit": _labels(
                check='if len(input_ids) >= max_length:\n        raise ValueError("too long")'
            ),
            "no_end_of_turn": _labels(
                learned='body[:-1] + [IGNORE] if message["role"] == "assistant" else [IGNORE] * len(body)'
            ),
            "never_refuses": _labels(check="pass"),
        },
        "right": {
            "spans": None,  # filled below: the same alternatives as test_turns
            "mask_after": None,
        },
    },
}
SHIP_IT["test_edges"]["right"] = dict(SHIP_IT["test_turns"]["right"])

VARIANTS = {"06_ship_it": SHIP_IT}
