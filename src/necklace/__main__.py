"""``python -m necklace``: the same as the ``necklace`` command."""

import sys

from necklace.cli import main

sys.exit(main())
