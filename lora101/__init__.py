"""lora101: LoRA and QLoRA, built from scratch. Each module holds one idea; see the README."""

import logging as _logging
import warnings as _warnings

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, importing bitsandbytes tries to fetch an optional faster 4-bit kernel
# from a model hub (through the `kernels` package) and logs a warning when it cannot. bitsandbytes
# then uses its own CPU kernel, which is what this course measures; the warning would only
# clutter every lesson that imports it.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

# transformers 5 renamed gradient checkpointing to activation checkpointing and warns, with its own file
# path, whenever peft or Trainer uses the old name. Learners cannot act on it, and a stored warning
# that carries a path makes a notebook's output differ from one machine to the next.
_warnings.filterwarnings(
    "ignore", message=r"`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning
)
