"""Which node is which site.

Before the first round every SuperNode is asked who it is (a `query.hello`
message; the site answers with its partition id, the number of partitions
it was configured with and, when the study has grants, its identity
certificate, which the server relays to the site's grantors and grantees). From then on the server knows a site by
the node it enrolled from, and a node that joins later (a hospital whose
SuperNode restarted gets a new node id) is asked when it first appears.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from study.config import Study

HELLO = "query.hello"
SITE_WAIT_S = 300.0  # how long to wait for every hospital's SuperNode to connect


class EnrolmentError(RuntimeError):
    """The federation's SuperNodes do not match the study."""


class SiteDirectory:
    def __init__(self, study: Study) -> None:
        self.study = study
        self.node_site: dict[int, int] = {}
        # nodes a site left when it came back on a new node: their late replies
        # are still that site's (never sampled again)
        self.retired: dict[int, int] = {}
        self.certificates: dict[int, bytes] = {}  # site -> identity certificate (PEM)

    def site_of(self, node: int) -> int | str:
        if node in self.node_site:
            return self.node_site[node]
        return self.retired.get(node, f"node-{node}")

    def enrol_all(self, grid: Grid, *, wait_s: float = SITE_WAIT_S) -> None:
        """Every site must be connected: a federation of another size would
        partition the data differently from what the study says."""
        n = self.study.num_sites
        deadline = time.monotonic() + wait_s
        while True:
            nodes = _all_nodes(grid)
            if len(nodes) == n:
                break
            if len(nodes) > n or time.monotonic() > deadline:
                raise EnrolmentError(
                    f"the federation has {len(nodes)} SuperNode(s) but the study has num-sites = "
                    f"{n}; start one SuperNode per site (flwr run: "
                    f'--federation-config "num-supernodes={n}")'
                )
            time.sleep(1.0)
        found = self._hello(grid, nodes, timeout_s=max(0.0, deadline - time.monotonic()) + 60)
        missing = [node for node in nodes if node not in found]
        if missing:
            raise EnrolmentError(
                f"{len(missing)} of {n} SuperNodes did not say which site they are "
                "(no answer to the enrolment message): see their logs"
            )
        sites = sorted(found.values())
        if sites != list(range(n)):
            raise EnrolmentError(
                f"the SuperNodes are sites {sites}, the study needs each of 0..{n - 1} once: "
                "give each SuperNode its own --node-config partition-id"
            )
        self.node_site = found

    def refresh(self, grid: Grid) -> None:
        """Enrol nodes that joined since the last round (a restarted hospital)."""
        new = [node for node in _all_nodes(grid) if node not in self.node_site]
        if not new:
            return
        for node, site in self._hello(grid, new, timeout_s=self.study.round_timeout).items():
            for old in [o for o, s in self.node_site.items() if s == site]:
                self.retired[old] = self.node_site.pop(old)  # back on a new node
            self.node_site[node] = site

    def _hello(self, grid: Grid, nodes: Iterable[int], *, timeout_s: float) -> dict[int, int]:
        messages = [
            Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=HELLO)
            for node in nodes
        ]
        found: dict[int, int] = {}
        for reply in grid.send_and_receive(messages, timeout=timeout_s):
            node = reply.metadata.src_node_id
            if reply.has_error():
                continue
            status = reply.content.get("status")
            if status is not None and status.get("error"):
                raise EnrolmentError(
                    f"site {status.get('site')} could not enrol: {status['error']}"
                )
            identity = reply.content["identity"]
            site, of = int(identity["site"]), int(identity["sites"])
            if of != self.study.num_sites or not 0 <= site < of:
                raise EnrolmentError(
                    f"a SuperNode says it is partition {site} of {of}; the study has num-sites "
                    f"= {self.study.num_sites}: fix its --node-config"
                )
            found[node] = site
            if "certificate" in identity:
                self.certificates[site] = bytes(identity["certificate"])
        return found


def _all_nodes(grid: Grid) -> list[int]:
    """Every connected node, enrolled or not (ReportingGrid samples only enrolled ones)."""
    return list(grid.all_node_ids() if hasattr(grid, "all_node_ids") else grid.get_node_ids())
