"""lora101: LoRA and QLoRA, built from scratch. Each module holds one idea; see the README."""

import logging as _logging

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, importing bitsandbytes tries to fetch an optional faster 4-bit kernel
# from a model hub (through the `kernels` package) and logs a warning when it cannot. bitsandbytes
# then uses its own CPU kernel, which is what this course measures; the warning would only
# clutter every lesson that imports it.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
