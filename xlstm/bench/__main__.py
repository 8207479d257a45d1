"""``python -m xlstm.bench`` is ``python -m xlstm bench``."""

import sys

from .cli import main

sys.exit(main())
