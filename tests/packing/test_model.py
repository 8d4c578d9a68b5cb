import pytest

from framework.packing import (PriceTable, Resources, Unplaced, resolve_price)


def test_resources_arithmetic_and_fit():
    a = Resources(1, 2, 3, 0)
    b = Resources(0.5, 1, 1, 1)
    assert a + b == Resources(1.5, 3, 4, 1)
    assert a - b == Resources(0.5, 1, 2, -1)
    assert Resources(1, 2).fits_in(Resources(1, 2))
    assert Resources(1 + 1e-12, 2).fits_in(Resources(1, 2))
    assert not Resources(1.01, 2).fits_in(Resources(1, 2))
    assert Resources.from_mapping({"mem": 3}).as_dict() == {"cpus": 0.0, "mem": 3.0, "disk": 0.0, "gpus": 0.0,
                                                             "ports": 0.0}
    assert Resources().is_zero() and not a.is_zero()
    # ports (issue 15) is a count the packer knows; anything else is still refused
    assert Resources.from_mapping({"ports": 2}) == Resources(ports=2)
    assert not Resources(ports=3).fits_in(Resources(cpus=8, ports=2))
    with pytest.raises(ValueError):
        Resources.from_mapping({"ram": 1})


def test_price_precedence_hostname_then_attribute_table_then_scalar_then_default():
    table = PriceTable(attribute="cost", by_hostname={"h1": 5.0},
                       by_attribute={"type": {"big": 3.0}}, default=0.7)
    attrs = {"type": "big", "cost": 2.0}
    assert resolve_price("h1", attrs, table) == 5.0
    assert resolve_price("h2", attrs, table) == 3.0
    assert resolve_price("h2", {"type": "small", "cost": 2.0}, table) == 2.0
    assert resolve_price("h2", {"cost": "1.5"}, table) == 1.5
    assert resolve_price("h2", {"cost": "n/a"}, table) == 0.7
    assert resolve_price("h2", {}, table) == 0.7
    assert resolve_price("h", {"price": 4.0}, PriceTable()) == 4.0
    assert resolve_price("h", {}, PriceTable()) == 1.0


def test_price_attribute_table_matches_integral_float_values_and_sorted_names():
    table = PriceTable(by_attribute={"tier": {"2": 9.0}, "rack": {"r1": 4.0}})
    assert resolve_price("h", {"tier": 2.0}, table) == 9.0
    # both match: names tried in sorted order, "rack" < "tier"
    assert resolve_price("h", {"tier": 2.0, "rack": "r1"}, table) == 4.0


def test_negative_price_rejected():
    with pytest.raises(ValueError):
        resolve_price("h", {"price": -1.0}, PriceTable())


def test_unplaced_describe():
    u = Unplaced("t1", {"mem": 3, "cpus": 1}, {"attribute_equals(zone=a)": 2})
    assert u.describe() == ("t1: mem exhausted on 3 agents; cpus exhausted on 1 agent; "
                            "attribute_equals(zone=a) filtered 2")
