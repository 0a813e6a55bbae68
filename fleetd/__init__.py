"""fleet, rebuilt in Python: the daemon and the core library.

fleetctl imports from here, so this package's top level must stay cheap to import:
no etcd, D-Bus or HTTP libraries at import time.
"""

__version__ = "0.1.0"
