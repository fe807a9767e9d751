"""``python -m finedefics_cli`` (what ``accelerate launch -m finedefics_cli`` and ``torchrun -m`` run)."""

import sys

from . import main

sys.exit(main())
