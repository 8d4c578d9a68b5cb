"""The Mesos master a ZooKeeper ensemble elects (``zk://`` masters), found as Mesos' own detector
and pymesos' find it: each master registers an ephemeral sequential znode ``json.info_<seq>``
under the path, holding its MasterInfo as JSON, and the smallest sequence number leads.

``run`` hands ``zk://`` masters to pymesos, which watches the election itself; this module serves
the commands that need the leader's address once (``plan`` reads its ``/master/state``)."""

from __future__ import annotations

import json
import logging

from framework.errors import JobSpecError
from framework.jobspec import MasterAddress, parse_master

LEADER_PREFIX = "json.info_"
"""The znodes a Mesos master (1.0 and later) registers in its election."""
CONNECT_TIMEOUT_SECONDS = 10.0


def leading_master(master: MasterAddress, text: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> str:
    """``host:port`` of the master that ZooKeeper names as leader under ``master.path``; a
    :class:`JobSpecError` naming ``text`` (the master as given) when ZooKeeper cannot be reached or
    names no master."""
    from kazoo.client import KazooClient
    from kazoo.exceptions import KazooException, NoNodeError
    from kazoo.handlers.threading import KazooTimeoutError

    hosts = ",".join(f"{host}:{port}" for host, port in master.hosts)
    logging.getLogger("kazoo").setLevel(logging.ERROR)  # its retries are warnings; the outcome is one line here
    client = KazooClient(hosts=hosts)
    try:
        client.start(timeout=timeout)
    except KazooTimeoutError:
        client.close()
        raise JobSpecError(f"{text}: no ZooKeeper server of {hosts} answered within {timeout:g} s") from None
    try:
        children = client.get_children(master.path)
        candidates = sorted(child for child in children if child.startswith(LEADER_PREFIX))
        if not candidates:
            raise JobSpecError(f"{text}: no Mesos master is registered under {master.path} "
                               f"(no {LEADER_PREFIX}* znode)")
        data, _stat = client.get(f"{master.path}/{candidates[0]}")
        address = json.loads(data.decode("utf-8"))["address"]
        leader = f"{address['ip']}:{int(address['port'])}"
        if parse_master(leader).kind != "host":
            raise ValueError(leader)
        return leader
    except NoNodeError:
        raise JobSpecError(f"{text}: ZooKeeper has no {master.path} (no Mesos master registered there)") from None
    except (KazooException, ValueError, KeyError, TypeError) as error:
        raise JobSpecError(f"{text}: cannot read the leading master from ZooKeeper "
                           f"({type(error).__name__})") from None
    finally:
        client.stop()
        client.close()
