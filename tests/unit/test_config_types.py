"""The declared-config checker on a made-up schema: every rule, with the key in the message."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import pytest
from omegaconf import OmegaConf

from qtune.config.declared import ConfigError, check_section, knob


@dataclasses.dataclass
class Inner:
    depth: int = knob(2, ge=1)


@dataclasses.dataclass
class Section:
    count: int = knob(3, ge=1)
    share: float = knob(0.5, ge=0.0, lt=1.0)
    mode: Literal["fast", "slow"] = "fast"
    cap: Optional[int] = knob(None, ge=1)
    sizes: list[int] = knob([8], ge=1)
    words: list[Literal["a", "b"]] = knob([])
    flag: bool = False
    path: str = ""
    inner: Inner = dataclasses.field(default_factory=Inner)


def check(**values):
    node = OmegaConf.create(values)
    check_section(node, Section, "grp")
    return node


@pytest.mark.parametrize(
    "values,message",
    [
        ({"count": 0}, "grp.count=0 must be at least 1"),
        ({"count": 1.5}, "grp.count=1.5 must be an integer"),
        ({"count": True}, "grp.count=True must be an integer"),
        ({"share": 1.0}, r"grp.share=1.0 is out of range; expected a value in [0.0, 1.0)"),
        ({"share": "x"}, "grp.share='x' must be a number"),
        ({"mode": "slwo"}, "grp.mode='slwo' must be one of 'fast', 'slow' (did you mean slow?)"),
        ({"cap": "x"}, "grp.cap='x' must be an integer or null"),
        ({"cap": 0}, "grp.cap=0 must be at least 1"),
        ({"sizes": [4, 0]}, "grp.sizes.1=0 must be at least 1"),
        ({"sizes": 4}, "grp.sizes=4 must be a list of integer"),
        ({"words": ["a", "c"]}, "grp.words.1='c' must be one of 'a', 'b'"),
        ({"flag": "yes"}, "grp.flag='yes' must be true or false"),
        ({"path": 3}, "grp.path=3 must be a string"),
        ({"inner": {"depth": 0}}, "grp.inner.depth=0 must be at least 1"),
        ({"inner": {"deep": 1}}, "grp.inner.deep is not a known key (did you mean depth?)"),
        ({"cuont": 1}, "grp.cuont is not a known key (did you mean count?); known: cap, count"),
        ({"path": "???"}, "grp.path is required (set grp.path=...)"),
    ],
)
def test_each_rule_names_the_key(values, message):
    with pytest.raises(ConfigError) as err:
        check(**values)
    assert message in str(err.value)


def test_good_values_pass_and_numbers_in_strings_become_numbers():
    node = check(
        count="4", share="0.25", cap=None, sizes=[1, 2], words=["b"], flag=True, mode="slow", inner={"depth": 3}
    )
    assert node.count == 4 and isinstance(node.count, int)
    assert node.share == 0.25 and isinstance(node.share, float)
    check(share=0)  # an integer is a number
    check()  # absent keys take the reader's default
