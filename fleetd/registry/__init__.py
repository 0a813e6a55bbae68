"""The etcd adapter: the only package that knows etcd keys or imports the etcd client."""
