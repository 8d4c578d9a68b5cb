"""Resources (scalars and port-like ranges) and attributes in Mesos v1 JSON shapes."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

Range = tuple[int, int]
_SCALAR_ORDER = ("cpus", "mem", "disk", "gpus")
_EPSILON = 1e-9
DEFAULT_PORTS = "[31000-32000]"
"""What a Mesos agent offers as ``ports`` when its ``--resources`` name none."""


def _round(value: float) -> float:
    # Mesos stores scalars as fixed point with three decimal digits.
    return round(value * 1000.0) / 1000.0


def format_number(value: float) -> str:
    """Mesos-style number: ``64`` for 64.0, ``1.9`` for 1.9."""
    value = _round(value)
    return str(int(value)) if float(value).is_integer() else repr(value)


def normalize_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sort and coalesce overlapping/adjacent ranges."""
    out: list[Range] = []
    for begin, end in sorted((int(b), int(e)) for b, e in ranges):
        if begin > end:
            continue
        if out and begin <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((begin, end))
    return out


def subtract_ranges(left: list[Range], right: list[Range]) -> list[Range]:
    """``left`` minus ``right``."""
    result = normalize_ranges(left)
    for rb, re_ in normalize_ranges(right):
        nxt: list[Range] = []
        for b, e in result:
            if re_ < b or rb > e:
                nxt.append((b, e))
                continue
            if b < rb:
                nxt.append((b, rb - 1))
            if re_ < e:
                nxt.append((re_ + 1, e))
        result = nxt
    return result


def ranges_contain(outer: list[Range], inner: list[Range]) -> bool:
    return not subtract_ranges(inner, outer)


def format_ranges(ranges: list[Range]) -> str:
    return "[" + ", ".join(f"{b}-{e}" for b, e in ranges) + "]"


def parse_ranges(text: str) -> list[Range]:
    """Parse ``[31000-32000, 40000-40010]``."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(f"invalid ranges {text!r}")
    out: list[Range] = []
    for part in body[1:-1].split(","):
        part = part.strip()
        if not part:
            continue
        begin, _, end = part.partition("-")
        out.append((int(begin), int(end or begin)))
    return normalize_ranges(out)


@dataclass
class Resources:
    """A bag of unreserved resources of the default role ``*``."""

    scalars: dict[str, float] = field(default_factory=dict)
    ranges: dict[str, list[Range]] = field(default_factory=dict)

    # -- construction ---------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "Resources":
        """From a user mapping like ``{"cpus": 2, "mem": 4096, "ports": "[31000-32000]"}``."""
        res = cls()
        for name, value in spec.items():
            if isinstance(value, str) and value.strip().startswith("["):
                res.ranges[name] = parse_ranges(value)
            elif isinstance(value, (list, tuple)):
                res.ranges[name] = normalize_ranges(tuple(r) for r in value)
            else:
                res.scalars[name] = _round(float(value))
        return res

    @classmethod
    def for_agent(cls, spec: Mapping[str, Any]) -> "Resources":
        """An agent's total from its resource mapping, as a Mesos agent sets it up: ``ports``
        default to ``[31000-32000]`` when not named (``"ports": "[]"`` for none)."""
        return cls.from_spec({"ports": DEFAULT_PORTS, **dict(spec)})

    @classmethod
    def from_json(cls, items: Iterable[Mapping[str, Any]] | None) -> "Resources":
        """From a v1 ``Resource`` list; raises ValueError for unsupported shapes."""
        res = cls()
        for item in items or ():
            name = item.get("name")
            rtype = item.get("type")
            if not isinstance(name, str):
                raise ValueError(f"Resource without a name: {dict(item)!r}")
            if rtype == "SCALAR":
                value = float((item.get("scalar") or {}).get("value", 0.0))
                if value < 0:
                    raise ValueError(f"Negative scalar resource {name}")
                res.scalars[name] = _round(res.scalars.get(name, 0.0) + value)
            elif rtype == "RANGES":
                rng = [(int(r["begin"]), int(r["end"])) for r in (item.get("ranges") or {}).get("range", [])]
                res.ranges[name] = normalize_ranges(res.ranges.get(name, []) + rng)
            else:
                raise ValueError(f"Unsupported resource type {rtype!r} for {name!r}")
        return res

    def copy(self) -> "Resources":
        return Resources(dict(self.scalars), {k: list(v) for k, v in self.ranges.items()})

    # -- arithmetic -----------------------------------------------------
    def __add__(self, other: "Resources") -> "Resources":
        out = self.copy()
        for name, value in other.scalars.items():
            out.scalars[name] = _round(out.scalars.get(name, 0.0) + value)
        for name, rng in other.ranges.items():
            out.ranges[name] = normalize_ranges(out.ranges.get(name, []) + rng)
        return out

    def __sub__(self, other: "Resources") -> "Resources":
        out = self.copy()
        for name, value in other.scalars.items():
            out.scalars[name] = max(0.0, _round(out.scalars.get(name, 0.0) - value))
        for name, rng in other.ranges.items():
            out.ranges[name] = subtract_ranges(out.ranges.get(name, []), rng)
        return out

    def contains(self, other: "Resources") -> bool:
        for name, value in other.scalars.items():
            if value > self.scalars.get(name, 0.0) + _EPSILON:
                return False
        for name, rng in other.ranges.items():
            if not ranges_contain(self.ranges.get(name, []), rng):
                return False
        return True

    def is_empty(self) -> bool:
        return not any(v > _EPSILON for v in self.scalars.values()) and not any(self.ranges.values())

    def allocatable(self) -> bool:
        """Mesos' default minimum allocatable resources: cpus >= 0.01 or mem >= 32."""
        return self.scalars.get("cpus", 0.0) >= 0.01 - _EPSILON or self.scalars.get("mem", 0.0) >= 32 - _EPSILON

    def scalar(self, name: str) -> float:
        return self.scalars.get(name, 0.0)

    # -- rendering ------------------------------------------------------
    def _names(self) -> list[str]:
        """Ranges first, then the scalars: the order of an agent's resources in what Mesos 1.11
        sends (offers, and the texts of its resource errors: ``ports(...):[...]; cpus(...):2``)."""
        names = sorted(n for n, v in self.ranges.items() if v and n not in self.scalars)
        names += [n for n in _SCALAR_ORDER if self.scalars.get(n, 0.0) > _EPSILON]
        names += sorted(n for n, v in self.scalars.items() if n not in _SCALAR_ORDER and v > _EPSILON)
        return names

    def to_json(self, role: bool = True, allocation_info: bool = False) -> list[dict[str, Any]]:
        """v1 ``Resource`` list (zero scalars and empty ranges are omitted)."""
        out: list[dict[str, Any]] = []
        for name in self._names():
            if name in self.ranges and name not in self.scalars:
                item: dict[str, Any] = {
                    "name": name, "type": "RANGES",
                    "ranges": {"range": [{"begin": b, "end": e} for b, e in self.ranges[name]]},
                }
            else:
                item = {"name": name, "type": "SCALAR", "scalar": {"value": float(self.scalars[name])}}
            if role:
                item["role"] = "*"
            if allocation_info:
                item["allocation_info"] = {"role": "*"}
            out.append(item)
        return out

    def to_state(self, include: Iterable[str] = ("disk", "mem", "gpus", "cpus")) -> dict[str, Any]:
        """Shape used by ``/master/state``: ``{"cpus": 2.0, "ports": "[31000-32000]"}``."""
        out: dict[str, Any] = {name: float(self.scalars.get(name, 0.0)) for name in include}
        for name, value in self.scalars.items():
            out.setdefault(name, float(value))
        for name, rng in self.ranges.items():
            if rng:
                out[name] = format_ranges(rng)
        return out

    def __str__(self) -> str:
        parts = []
        for name in self._names():
            if name in self.ranges and name not in self.scalars:
                parts.append(f"{name}(allocated: *):{format_ranges(self.ranges[name])}")
            else:
                parts.append(f"{name}(allocated: *):{format_number(self.scalars[name])}")
        return "; ".join(parts)


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def attribute_json(name: str, value: Any) -> dict[str, Any]:
    """One v1 ``Attribute``; strings are parsed like the agent's ``--attributes`` flag."""
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, (int, float)):
        return {"name": name, "type": "SCALAR", "scalar": {"value": float(value)}}
    text = str(value).strip()
    if _NUMBER.match(text):
        return {"name": name, "type": "SCALAR", "scalar": {"value": float(text)}}
    if text.startswith("[") and text.endswith("]"):
        return {"name": name, "type": "RANGES",
                "ranges": {"range": [{"begin": b, "end": e} for b, e in parse_ranges(text)]}}
    if text.startswith("{") and text.endswith("}"):
        items = [i.strip() for i in text[1:-1].split(",") if i.strip()]
        return {"name": name, "type": "SET", "set": {"item": items}}
    return {"name": name, "type": "TEXT", "text": {"value": text}}


def attribute_state_value(attribute: Mapping[str, Any]) -> Any:
    """Value of an attribute as ``/master/state`` renders it."""
    kind = attribute["type"]
    if kind == "SCALAR":
        return attribute["scalar"]["value"]
    if kind == "TEXT":
        return attribute["text"]["value"]
    if kind == "RANGES":
        return format_ranges([(r["begin"], r["end"]) for r in attribute["ranges"]["range"]])
    return "{" + ",".join(attribute["set"]["item"]) + "}"


def parse_attributes(text: str) -> dict[str, str]:
    """Parse the agent flag syntax ``zone:a;price:1.5``."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"invalid attribute {part!r} (expected name:value)")
        out[name.strip()] = value.strip()
    return out
