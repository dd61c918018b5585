"""``python -m diffusion_es``: the same as the ``diffusion-es`` command."""

import sys

from .cli import main

sys.exit(main())
