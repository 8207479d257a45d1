"""``python -m xlstm.bench`` is ``python -m xlstm bench``."""

import sys

from ..cli.bench import main

sys.exit(main())
