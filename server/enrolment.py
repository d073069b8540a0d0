"""Which node is which site.

Before the first round every SuperNode is asked who it is (a `query.hello`
message; the site answers with its partition id, the number of partitions
it was configured with and, when the study has grants, its identity
certificate, which the server relays to the site's grantors and grantees). From then on the server knows a site by
the node it enrolled from, and a node that joins later (a hospital whose
SuperNode restarted gets a new node id) is asked when it first appears.

A hello reply is hostile input: one that is not a well-formed identity (no
`identity` record, a site that is not an int in 0..num-sites-1, a certificate
that is not bytes, an error status) is refused with the reason, never an
exception. Before the first round that is an EnrolmentError naming the node
(every site must be there); later it is a `refused` event, and that node is
not asked again. An enrolled site keeps its node while that node is
connected: a later node claiming the same site is refused (a `refused`
event) and takes the site over only once the enrolled node has gone (a
hospital whose SuperNode restarted). A later node that does not answer
delays a round by at most HELLO_WAIT_S, and is asked again no sooner than
HELLO_RETRY_S.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from study import protocol
from study.config import Study
from study.protocol import Identity, ProtocolError
from study.sites import SiteId

HELLO = protocol.HELLO
SITE_WAIT_S = 300.0  # how long to wait for every hospital's SuperNode to connect
# A node that joins later: the most a round waits for it to say which site it is (a
# SuperNode answers in seconds, a restarted one within a minute; round-timeout if
# shorter), and how long before a node that did not answer is asked again: a silent
# node delays a round by at most HELLO_WAIT_S once every HELLO_RETRY_S
HELLO_WAIT_S = 120.0
HELLO_RETRY_S = 600.0
REJOIN_POLL_S = 1.0  # how often a round waiting for a missing site looks again
log = logging.getLogger(__name__)


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
        # nodes whose hello was refused (malformed, or an error): node -> reason; never asked
        # again (a restarted SuperNode comes back with a new node id)
        self.refused: dict[int, str] = {}
        # nodes that said which site they are while that site's node was still connected:
        # node -> site; one takes the site over once its node has gone
        self.claims: dict[int, int] = {}
        self._offered: dict[int, bytes] = {}  # node -> the certificate its hello carried
        self._announced: set[int] = set()  # claimants whose refusal was logged
        self._unanswered: dict[int, float] = {}  # node -> when its hello went unanswered

    def site_of(self, node: int) -> SiteId:
        """The site a node enrolled as (a retired node's late replies are still its
        site's); a node that has not said which site it is is `node-N`."""
        index = self.node_site.get(node, self.retired.get(node))
        return SiteId.node(node) if index is None else SiteId.site(index)

    def await_sites(self, grid: Grid, rnd: int, *, events=None) -> list[SiteId]:
        """Before round `rnd`: enrol the nodes that joined since the last round, and
        wait up to `rejoin-wait` seconds for study sites with no connected node (a
        hospital restarting is back within seconds), with one `waiting` event
        naming them. Returns the sites still missing, which the round records failed."""
        deadline = time.monotonic() + self.study.rejoin_wait
        announced = False
        while True:
            self.refresh(grid)
            connected = {self.site_of(node).index for node in grid.get_node_ids()}
            missing = [SiteId.site(i) for i in range(self.study.num_sites) if i not in connected]
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                return missing
            if not announced and events is not None:
                names = [str(site) for site in missing]
                events.emit("waiting", round=rnd, sites=names, seconds=self.study.rejoin_wait)
            announced = True
            time.sleep(min(REJOIN_POLL_S, left))

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
        refused = [node for node in nodes if node in self.refused]
        if refused:
            raise EnrolmentError(
                "enrolment refused "
                + "; ".join(f"node {node}: {self.refused[node]}" for node in refused)
            )
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
        for node, site in found.items():
            if node in self._offered:
                self.certificates[site] = self._offered.pop(node)

    def refresh(self, grid: Grid) -> None:
        """Enrol nodes that joined since the last round (a restarted hospital). A node
        whose hello is refused, or that claims a site whose node is still connected,
        is logged as a `refused` event (the grid's events, when it has them); the
        study goes on without it."""
        connected = _all_nodes(grid)
        online = set(connected)
        known = self.node_site.keys() | self.refused.keys() | self.claims.keys()
        now = time.monotonic()
        new = [
            node
            for node in connected
            if node not in known and now - self._unanswered.get(node, -math.inf) >= HELLO_RETRY_S
        ]
        if new:
            before = set(self.refused)
            wait = min(self.study.round_timeout, HELLO_WAIT_S)
            found = self._hello(grid, new, timeout_s=wait)
            self.claims.update(found)
            for node in new:
                if node in found or node in self.refused:
                    self._unanswered.pop(node, None)
                else:  # no answer (or Flower's error reply): asked again after HELLO_RETRY_S
                    self._unanswered[node] = now
            for node in [n for n in self.refused if n not in before]:
                self._refuse(grid, node, None, self.refused[node])
        for node in [n for n in self.claims if n in online]:
            site = self.claims[node]
            holders = [o for o, s in self.node_site.items() if s == site]
            present = [o for o in holders if o in online]
            if present:
                if node not in self._announced:
                    self._announced.add(node)
                    self._refuse(
                        grid,
                        node,
                        site,
                        f"it says it is site {site}, whose node {present[0]} is still "
                        "connected; it may take the site over once that node has gone",
                    )
                continue
            del self.claims[node]
            for old in holders:
                self.retired[old] = self.node_site.pop(old)  # back on a new node
            self.node_site[node] = site
            if node in self._offered:
                self.certificates[site] = self._offered.pop(node)

    def _refuse(self, grid: Grid, node: int, site: int | None, reason: str) -> None:
        name = None if site is None else str(SiteId.site(site))
        log.warning("enrolment: node %s refused: %s", node, reason)
        events = getattr(grid, "events", None)
        if events is not None:
            events.emit("refused", node=node, site=name, reason=reason)

    def _hello(self, grid: Grid, nodes: Iterable[int], *, timeout_s: float) -> dict[int, int]:
        """Ask `nodes` which site they are: {node: site} for the well-formed answers
        (a certificate an answer carries is kept aside until the node is enrolled).
        A malformed answer or an error status is put in `refused` with the reason;
        a node that does not answer, or whose answer is Flower's error, is neither
        (it is asked again when it is next seen)."""
        messages = [
            Message(
                RecordDict({protocol.CONFIG: ConfigRecord({})}),
                dst_node_id=node,
                message_type=HELLO,
            )
            for node in nodes
        ]
        found: dict[int, int] = {}
        for reply in grid.send_and_receive(messages, timeout=timeout_s):
            node = reply.metadata.src_node_id
            if reply.has_error():
                continue
            try:
                site, certificate = self._identity(reply.content)
            except EnrolmentError as exc:
                self.refused[node] = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - hostile input: refused, with the reason
                self.refused[node] = f"malformed hello reply ({type(exc).__name__}: {exc})"
                continue
            found[node] = site
            if certificate is not None:
                self._offered[node] = certificate
        return found

    def _identity(self, content: RecordDict) -> tuple[int, bytes | None]:
        """The site and certificate a hello reply states; EnrolmentError says what is wrong."""
        status = content.get(protocol.STATUS)
        if isinstance(status, ConfigRecord) and status.get(protocol.ERROR):
            raise EnrolmentError(
                f"site {status.get(protocol.SITE)!r} could not enrol: {status[protocol.ERROR]}"
            )
        try:
            identity = Identity.from_record(content)
        except ProtocolError as exc:
            raise EnrolmentError(str(exc)) from None
        site, of = identity.site, identity.sites
        if of != self.study.num_sites or not 0 <= site < of:
            raise EnrolmentError(
                f"it says it is partition {site} of {of}; the study has num-sites "
                f"= {self.study.num_sites}: fix its --node-config"
            )
        return site, identity.certificate


def _all_nodes(grid: Grid) -> list[int]:
    """Every connected node, enrolled or not (ReportingGrid samples only enrolled ones)."""
    return list(grid.all_node_ids() if hasattr(grid, "all_node_ids") else grid.get_node_ids())
