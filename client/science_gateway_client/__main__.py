"""``python -m science_gateway_client``: the ``science-gateway`` command."""

import sys

from .cli import main

sys.exit(main())
