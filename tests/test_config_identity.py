"""The canonical config form is injective: different configs never share a cache entry."""

from __future__ import annotations

import dataclasses
import decimal
import enum
import os
import subprocess
import sys
from pathlib import Path

import pytest

import consist
from consist.hashing import canonical, hash_canonical

DIFFERENT = [
    ({"x": float("nan")}, {"x": "__nan__"}),
    ({"x": float("nan")}, {"x": {"$float": "nan"}}),
    ({"x": float("inf")}, {"x": "__inf__"}),
    ({"x": float("-inf")}, {"x": float("inf")}),
    ({"x": b"\x01"}, {"x": {"__bytes__": "01"}}),
    ({"x": b"\x01"}, {"x": {"$bytes": "01"}}),
    ({"x": b"\x01"}, {"x": "01"}),
    ({"x": {1, 2}}, {"x": [1, 2]}),
    ({"x": {1, 2}}, {"x": {"$set": [1, 2]}}),
    ({"$set": [1]}, {"$$set": [1]}),
    ({"x": True}, {"x": 1}),
    ({"x": decimal.Decimal("1.000000000000000000001")}, {"x": 1}),
    ({"x": None}, {"x": "None"}),
    ({"x": [1, [2]]}, {"x": [[1], 2]}),
    ({"x": ""}, {}),
]


@pytest.mark.parametrize(("a", "b"), DIFFERENT, ids=[repr(a)[:40] for a, _b in DIFFERENT])
def test_different_configs_hash_differently(a, b) -> None:
    assert hash_canonical(canonical(a)) != hash_canonical(canonical(b))


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Params:
    rate: float
    modes: tuple[str, ...]


SAME = [
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
    ({"x": 0}, {"x": 0.0}),
    ({"x": (1, 2)}, {"x": [1, 2]}),
    ({"x": Color.RED}, {"x": "red"}),
    ({"x": Path("a/b")}, {"x": "a/b"}),
    ({1: "a"}, {"1": "a"}),
    ({1.0: "a"}, {"1": "a"}),
    ({"x": decimal.Decimal("0.5")}, {"x": 0.5}),
    ({"p": Params(1.0, ("car",))}, {"p": {"rate": 1, "modes": ["car"]}}),
    ({"s": {"b", "a"}}, {"s": {"a", "b"}}),
]


@pytest.mark.parametrize(("a", "b"), SAME, ids=[repr(a)[:40] for a, _b in SAME])
def test_equal_meanings_hash_alike(a, b) -> None:
    assert hash_canonical(canonical(a)) == hash_canonical(canonical(b))


def test_keys_that_collide_are_refused() -> None:
    assert canonical({"$x": 1, "$$x": 2}) == {"$$x": 1, "$$$x": 2}  # escaped, so no collision
    for bad in ({1: "a", "1": "b"}, {"1": "a", 1.0: "b"}, {"True": "u", True: "t"}):
        with pytest.raises(consist.ConfigError, match="collide"):
            canonical(bad)
    with pytest.raises(consist.ConfigError, match="finite"):
        canonical({float("nan"): 1})
    with pytest.raises(consist.ConfigError, match="no canonical form"):
        canonical({"f": object()})


def test_numpy_values() -> None:
    np = pytest.importorskip("numpy")
    assert canonical(np.float64(0.5)) == 0.5 and canonical(np.int32(3)) == 3
    assert canonical(np.array([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert hash_canonical(canonical(np.array([7]))) != hash_canonical(canonical(np.int64(7)))


SET_IN_MODEL = """
import sys
from pydantic import BaseModel
from consist.hashing import canonical, hash_canonical
class M(BaseModel):
    modes: set[str]
print(hash_canonical(canonical(M(modes={"car", "walk", "bike", "transit", "rail"}))))
"""


def test_a_set_inside_a_pydantic_model_hashes_alike_in_every_process() -> None:
    pytest.importorskip("pydantic")
    seen = {
        subprocess.run(
            [sys.executable, "-c", SET_IN_MODEL], capture_output=True, text=True, check=True, timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2", "3", "4")
    }  # fmt: skip
    assert len(seen) == 1


def test_a_run_with_nan_is_not_a_hit_for_the_string(tracker, calls) -> None:
    def step(x) -> None:
        calls()

    tracker.run(step, config={"x": float("nan")})
    assert not tracker.run(step, config={"x": "__nan__"}).cache_hit
    assert tracker.run(step, config={"x": float("nan")}).cache_hit
    assert calls.n == 2
