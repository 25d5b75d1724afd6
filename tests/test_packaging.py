"""The distribution's dependencies: a device install brings no torch; make's [test] still brings everything."""

import re
import tomllib

from conftest import ROOT

from splitserve.commands import EXTRA_OF

HEAVY = {"torch", "torchvision", "compressai"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in requirements}  # type: ignore[union-attr]


def test_the_base_and_device_extra_need_no_torch():
    p = project()
    assert not names(p["dependencies"]) & HEAVY
    assert not names(p["optional-dependencies"]["device"]) & HEAVY
    assert "onnxruntime" in names(p["optional-dependencies"]["device"])


def test_all_brings_every_extra_and_test_brings_all():
    extras = project()["optional-dependencies"]
    everything = next(r for r in extras["all"] if r.startswith("splitserve["))
    assert set(everything[len("splitserve[") : -1].split(",")) == set(extras) - {"all", "test"}
    assert "splitserve[all]" in extras["test"]


def test_every_command_goes_through_the_extra_check_and_every_extra_it_names_exists():
    p = project()
    assert all(target.startswith("splitserve.commands:") for target in p["scripts"].values())
    assert set(EXTRA_OF.values()) <= set(p["optional-dependencies"])
