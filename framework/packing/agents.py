"""What the cluster offers: resource vectors and agents (the lowest layer of the packer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

RESOURCE_NAMES = ("cpus", "mem", "disk", "gpus", "ports")
"""Every dimension the packer knows; ``ports`` is a count of ports (Mesos offers them as ranges:
``Agent.port_ranges`` keeps which ones, ``framework.translator.assign_ports`` picks them)."""
SCALAR_NAMES = RESOURCE_NAMES[:4]
"""The dimensions every packing problem has; the others only when some task or executor asks for them."""
EPS = 1e-9

PortRanges = tuple[tuple[int, int], ...]
"""Inclusive ``(begin, end)`` port ranges, sorted and disjoint."""


@dataclass(frozen=True, slots=True)
class Resources:
    """A vector of Mesos resources: the scalars, and ``ports`` as a count."""

    cpus: float = 0.0
    mem: float = 0.0
    disk: float = 0.0
    gpus: float = 0.0
    ports: float = 0.0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.mem + other.mem,
                         self.disk + other.disk, self.gpus + other.gpus, self.ports + other.ports)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.mem - other.mem,
                         self.disk - other.disk, self.gpus - other.gpus, self.ports - other.ports)

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        return (self.cpus, self.mem, self.disk, self.gpus, self.ports)

    def nonnegative(self) -> Resources:
        """Each component raised to at least 0 (what is left after a subtraction)."""
        return Resources(*(max(0.0, v) for v in self.as_tuple()))

    def fits_in(self, other: Resources) -> bool:
        """True if every component is at most ``other``'s (relative/absolute epsilon)."""
        return all(a <= b + EPS * max(1.0, abs(b)) for a, b in zip(self.as_tuple(), other.as_tuple()))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(RESOURCE_NAMES, self.as_tuple()))

    def is_zero(self) -> bool:
        return all(v == 0.0 for v in self.as_tuple())

    @classmethod
    def from_mapping(cls, m: Mapping[str, float]) -> Resources:
        unknown = set(m) - set(RESOURCE_NAMES)
        if unknown:
            raise ValueError(f"unknown resources: {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in m.items()})


@dataclass(frozen=True)
class Agent:
    """One agent as offered: free capacity, attributes, price, and what already runs there."""

    agent_id: str
    hostname: str
    offer_ids: tuple[str, ...]
    capacity: Resources
    attributes: Mapping[str, str | float]
    price: float = 1.0
    in_use: bool = False
    loaded_models: frozenset[str] = frozenset()
    running_tasks: Mapping[str, int] = field(default_factory=dict)
    port_ranges: PortRanges = ()
    """The ports offered (``capacity.ports`` counts them); empty when the offers hold none."""


def count_ports(ranges: PortRanges) -> int:
    """How many ports inclusive ``ranges`` (disjoint) hold."""
    return sum(end - begin + 1 for begin, end in ranges if end >= begin)


def normalize_port_ranges(ranges: Iterable[tuple[int, int]]) -> PortRanges:
    """Sorted, with overlapping and adjacent ranges merged and empty ones dropped."""
    out: list[tuple[int, int]] = []
    for begin, end in sorted((int(b), int(e)) for b, e in ranges):
        if begin > end:
            continue
        if out and begin <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((begin, end))
    return tuple(out)


def attr_text(value: str | float) -> str:
    """Attribute value as text: floats with integral values print without '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_port_ranges(text: str) -> PortRanges:
    """Mesos' text form ``"[31000-32000, 40000-40010]"`` (``"[]"``: none) as ranges; ValueError
    when it is not that, or a port is outside 0-65535."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(f"not port ranges like \"[31000-32000]\": {text!r}")
    ranges = []
    for part in body[1:-1].split(","):
        if not part.strip():
            continue
        begin, _, end = part.strip().partition("-")
        try:
            low, high = int(begin), int(end or begin)
        except ValueError:
            raise ValueError(f"not port ranges like \"[31000-32000]\": {text!r}") from None
        if not 0 <= low <= high <= 65535:
            raise ValueError(f"{part.strip()!r} is not a range of ports (0-65535, begin <= end)")
        ranges.append((low, high))
    return normalize_port_ranges(ranges)


def format_port_ranges(ranges: PortRanges) -> str:
    """Ranges in Mesos' text form: ``"[31000-32000]"``."""
    return "[" + ", ".join(f"{begin}-{end}" for begin, end in ranges) + "]"
