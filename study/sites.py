"""Which site a thing is: one identity type, spelled one way in every file.

A study's sites are numbered 0..num-sites-1 (a hospital's partition id).
Every file names site N "site-N" (rounds.jsonl, summary.json, the archive,
the events, the site folders). The coordinator also meets nodes that have not
said which site they are (a SuperNode that joined and did not answer its
hello yet): such a node is named "node-N" after its Flower node id, and is
never a site.

`SiteId` is that identity: `index` is the site's number (None for a node
that is not a site), `name` its one spelling, and `str()` gives the name.
`SiteId.parse` reads the forms the code receives: an int (a partition id),
"site-N" and "node-N". Ordered: sites by index, then unknown nodes by name
(a fixed order, so that float sums do not depend on reply order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

_NAME = re.compile(r"(site|node)-(0|[1-9][0-9]{0,17})")


@total_ordering
@dataclass(frozen=True)
class SiteId:
    """A study site (`index` 0, 1, ...) or a node that is not one (`index` None)."""

    index: int | None
    name: str

    def __post_init__(self) -> None:
        match = _NAME.fullmatch(self.name) if isinstance(self.name, str) else None
        if match is None:
            raise ValueError(f"a site is named 'site-N' or 'node-N', not {self.name!r}")
        is_site = match.group(1) == "site"
        if is_site != (self.index is not None) or (
            is_site and (_not_an_int(self.index) or int(match.group(2)) != self.index)
        ):
            raise ValueError(f"site name {self.name!r} does not match index {self.index!r}")

    @classmethod
    def site(cls, index: int) -> SiteId:
        """Site number `index` (a partition id, 0 or more)."""
        if _not_an_int(index) or index < 0:
            raise ValueError(f"a site index is an integer 0 or more, not {index!r}")
        return cls(index, f"site-{index}")

    @classmethod
    def node(cls, node_id: int) -> SiteId:
        """A node that has not said which site it is, by its Flower node id."""
        if _not_an_int(node_id) or node_id < 0:
            raise ValueError(f"a node id is an integer 0 or more, not {node_id!r}")
        return cls(None, f"node-{node_id}")

    @classmethod
    def parse(cls, value: SiteId | int | str) -> SiteId:
        """A site from an int (its index), "site-N" or "node-N"; ValueError otherwise."""
        if isinstance(value, SiteId):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls.site(value)
        match = _NAME.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(
                f"a site is an index (0, 1, ...), 'site-N' or 'node-N', not {str(value)[:40]!r}"
            )
        number = int(match.group(2))
        return cls.site(number) if match.group(1) == "site" else cls.node(number)

    @property
    def is_site(self) -> bool:
        """True for a study site, False for a node that has not said which site it is."""
        return self.index is not None

    def __str__(self) -> str:
        return self.name

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SiteId):
            return NotImplemented
        return self._order() < other._order()

    def _order(self) -> tuple[int, int, str]:
        return (0, self.index, "") if self.index is not None else (1, 0, self.name)


def _not_an_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)
