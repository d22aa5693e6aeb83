"""``python -m necklace.cli``: the same as the ``necklace`` command."""

import sys

from necklace.cli import main

sys.exit(main())
