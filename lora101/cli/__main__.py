"""``python -m lora101.cli ...``: the ``lora101`` command (what torchrun and accelerate launch)."""

import sys

from lora101.cli import main

sys.exit(main())
