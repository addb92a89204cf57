"""The registry: a broken plugin is named, and never hides the other domains."""

from importlib import metadata

import pytest

from sciffusion import api
from sciffusion.core import registry
from sciffusion.core.domain import Domain
from sciffusion.core.io import InputError


class HalfDone(Domain):
    """A plugin whose author left abstract methods out."""

    name = "halfdone"

    def load_dataset(self, data_cfg, split):
        return []


@pytest.fixture
def with_broken_plugins(monkeypatch):
    real = registry._entry_points()
    extra = [metadata.EntryPoint("halfdone", f"{__name__}:HalfDone", registry.GROUP),
             metadata.EntryPoint("missing", "no_such_module_xyz:Thing", registry.GROUP)]
    monkeypatch.setattr(registry, "_entry_points", lambda: real + extra)


def test_a_plugin_that_cannot_be_instantiated_is_named(with_broken_plugins):
    with pytest.raises(InputError, match=r"domain 'halfdone' \(.*:HalfDone\) cannot be instantiated: TypeError"):
        registry.get_domain("halfdone")
    with pytest.raises(InputError, match="domain 'missing' .* failed to load"):
        registry.get_domain("missing")


def test_sciffusion_domains_lists_every_domain_and_marks_the_broken_ones(with_broken_plugins):
    rows = {r["name"]: r for r in api.domains()}
    assert {"molecules", "audio", "vocoder", "halfdone", "missing"} <= set(rows)
    assert "cannot be instantiated" in rows["halfdone"]["description"]
    assert rows["molecules"]["description"] and "failed" not in rows["molecules"]["description"]
