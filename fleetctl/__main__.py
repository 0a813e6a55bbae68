"""``python -m fleetctl``."""

import sys

from fleetctl.main import main

sys.exit(main())
