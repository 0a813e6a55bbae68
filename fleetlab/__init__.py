"""The fleet test lab: real components for tests, benchmarks and the local demo cluster.

etcd servers on loopback, namespaced systemd hosts, a real fleet cluster made of both, and
simulated machines for tests of scale. It lives beside the product, not inside it: the
wheel ships only ``fleetd`` and ``fleetctl``, so nothing here can end up on a production
machine. Tests find it through pytest's ``pythonpath``; bench scripts and
``python -m fleetlab.demo`` through the repository root on ``sys.path``.
"""
