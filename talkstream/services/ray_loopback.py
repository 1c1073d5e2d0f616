"""Ray on one machine's loopback, with nothing listening on the machine's network address.

Ray turns 127.0.0.1 into the machine's own address wherever it is given (`ray start --node-ip-address`, the address
a driver connects to: ray-project/ray#26293, #59110), so a cluster started "on 127.0.0.1" listens on the network and
a driver told 127.0.0.1 dials the machine's address instead. With `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` in the
environment before ray is imported, Ray keeps 127.0.0.1 as the node's address and every process it starts (GCS,
raylet, workers, Serve's controller and proxy) listens on loopback only; such a cluster is one node (`ray start
--address` refuses to join it). No ray import here: this must run before ray is imported.

A head on this machine is also treated as Ray treats `ray.init("auto")` for token authentication (on by default
since Ray 2.5x): with RAY_AUTH_MODE unset and a token in ~/.ray/auth_token (where `ray start` keeps it), the driver
sends it; Ray does so only for `auto`, and a driver given HOST:PORT is refused (`InvalidAuthToken`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host or "127.0.0.1")).is_loopback
    except (OSError, ValueError):
        return False


def _machine_address() -> str | None:
    """The address this machine reaches the network from (a UDP socket's route; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: any routable address gives the route's source address
            return s.getsockname()[0]
        except OSError:
            return None


def prepare_driver(address: str) -> bool:
    """Before ray is imported, for a driver about to connect to `address` (HOST:PORT of a head). A head on loopback:
    its token as for `auto`, and when it listens on loopback only, LOOPBACK_ENV, so that the driver's node address is
    127.0.0.1 too (else Ray dials the machine's address and retries for minutes). True when LOOPBACK_ENV was set."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not _is_loopback(host):
        return False
    if "RAY_AUTH_MODE" not in os.environ and os.path.exists(os.path.expanduser("~/.ray/auth_token")):
        os.environ["RAY_AUTH_MODE"] = "token"
    machine = _machine_address()
    if machine is not None and not ipaddress.ip_address(machine).is_loopback:
        with contextlib.suppress(OSError), socket.create_connection((machine, int(port)), timeout=1):
            return False  # the head listens on the machine's address as well: Ray's default resolution works
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)
    return True
