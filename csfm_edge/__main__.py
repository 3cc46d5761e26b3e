"""``python -m csfm_edge`` is the ``csfm-edge`` command."""

import sys

from csfm_edge.cli import main

sys.exit(main())
