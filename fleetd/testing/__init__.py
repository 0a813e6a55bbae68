"""Real components for tests, benchmarks and the local demo cluster.

etcd servers on loopback and namespaced systemd hosts. Not imported by the daemon itself.
"""
