"""What every command gets: the global options, the output streams and the cluster
(connected lazily, with the driver chosen by ``--driver``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from fleetctl.config import Config

if TYPE_CHECKING:
    from fleetctl.client import Cluster
    from fleetctl.tunnel import SshTunnel


@dataclass
class Context:
    config: Config
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _cluster: Cluster | None = None
    _tunnel: SshTunnel | None = None

    @property
    def tunnel(self) -> SshTunnel | None:
        if self.config.tunnel and self._tunnel is None:
            from fleetctl.tunnel import SshTunnel

            self._tunnel = SshTunnel(self.config)
        return self._tunnel

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            if self.config.driver == "etcd":
                from fleetctl.etcd_driver import EtcdClient

                tunnel = self.tunnel
                config = tunnel.etcd_config() if tunnel else self.config
                self._cluster = EtcdClient(config)
            else:
                from fleetctl.client import ApiClient

                tunnel = self.tunnel
                self._cluster = ApiClient(self.config, tunnel.dialer if tunnel else None)
        return self._cluster

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    @property
    def interactive(self) -> bool:
        """Whether stderr is a terminal (live progress is shown only then)."""
        try:
            return self.err.isatty()
        except (AttributeError, ValueError):
            return False

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None


__all__ = ["Context"]
