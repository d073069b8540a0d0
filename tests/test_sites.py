"""study/sites.py: one site identity, spelled "site-N" (or "node-N") in every file."""

from __future__ import annotations

import pytest

from study.sites import SiteId


def test_a_site_is_its_index_and_prints_as_site_n():
    site = SiteId.site(3)
    assert (site.index, site.name, str(site), site.is_site) == (3, "site-3", "site-3", True)
    assert f"{site}" == "site-3"


def test_a_node_that_is_not_a_site_prints_as_node_n():
    node = SiteId.node(1042)
    assert (node.index, str(node), node.is_site) == (None, "node-1042", False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, SiteId.site(0)), (7, SiteId.site(7)), ("site-12", SiteId.site(12)),
     ("node-44", SiteId.node(44)), (SiteId.site(2), SiteId.site(2))],
)  # fmt: skip
def test_parse_reads_every_form_the_code_receives(value, expected):
    assert SiteId.parse(value) == expected
    assert hash(SiteId.parse(value)) == hash(expected)  # usable as a dict key


@pytest.mark.parametrize(
    "value",
    [-1, True, 1.0, "site-", "site-01", "Site-1", "site-1 ", "node--2", "3", None, "x" * 99],
)
def test_parse_refuses_anything_else_and_says_what_it_got(value):
    with pytest.raises(ValueError, match="site"):
        SiteId.parse(value)


def test_a_name_that_disagrees_with_its_index_is_refused():
    with pytest.raises(ValueError, match="does not match"):
        SiteId(2, "site-3")
    with pytest.raises(ValueError, match="does not match"):
        SiteId(2, "node-2")
    with pytest.raises(ValueError, match="does not match"):
        SiteId(None, "site-2")


def test_sites_sort_by_index_then_unknown_nodes_by_name():
    ids = [SiteId.node(9), SiteId.site(10), SiteId.node(10), SiteId.site(2), SiteId.site(0)]
    assert [str(s) for s in sorted(ids)] == ["site-0", "site-2", "site-10", "node-10", "node-9"]


def test_a_site_is_not_equal_to_its_index_or_its_name():
    # one type: code that mixes an int or a string with a SiteId finds out at once
    assert SiteId.site(1) != 1 and SiteId.site(1) != "site-1"
