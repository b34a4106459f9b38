import pytest

from comfy_nodes.core.settings import Settings


def test_defaults(monkeypatch):
    for name in ("STAGETRACE_DISABLE", "STAGETRACE_OUTPUT_DIR", "STAGETRACE_NVTX", "STAGETRACE_SUMMARY",
                 "STAGETRACE_BUFFER_EVENTS"):
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env() == Settings(disabled=False, output_dir=None, nvtx=True, summary=True,
                                           buffer_events=65536)


def test_values_from_environment(monkeypatch):
    monkeypatch.setenv("STAGETRACE_DISABLE", "yes")
    monkeypatch.setenv("STAGETRACE_OUTPUT_DIR", "/somewhere")
    monkeypatch.setenv("STAGETRACE_NVTX", "0")
    monkeypatch.setenv("STAGETRACE_SUMMARY", "off")
    monkeypatch.setenv("STAGETRACE_BUFFER_EVENTS", "128")
    assert Settings.from_env() == Settings(disabled=True, output_dir="/somewhere", nvtx=False, summary=False,
                                           buffer_events=128)


@pytest.mark.parametrize("value", ["many", "-5", "0"])
def test_bad_buffer_size_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("STAGETRACE_BUFFER_EVENTS", value)
    with pytest.raises(ValueError, match="STAGETRACE_BUFFER_EVENTS"):
        Settings.from_env()
