import os

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


@pytest.mark.parametrize("value", ["many", "-5", "0", "1e9", "99999999999"])
def test_a_bad_buffer_size_names_the_variable_and_the_default_and_profiling_stays_on(monkeypatch, value):
    monkeypatch.setenv("STAGETRACE_BUFFER_EVENTS", value)
    problems = []
    settings = Settings.from_env(problems)
    assert settings.buffer_events == 65536 and not settings.disabled
    (line,) = problems
    assert line.startswith(f"STAGETRACE_BUFFER_EVENTS={value!r} is not a whole number") and "default (65536)" in line


# every variable: a good value, and a bad one that gives one line naming it and its default
NUMBERS = [("STAGETRACE_BUFFER_EVENTS", "buffer_events", "4096", 4096, ["0", "x", "16777217"]),
           ("STAGETRACE_GPU_KERNELS", "gpu_kernels", "100", 100, ["-1", "lots", "10000001"]),
           ("STAGETRACE_NVML_HZ", "nvml_hz", "50", 50, ["0", "99999", "2.5"]),
           ("STAGETRACE_KEEP_TRACES", "keep_traces", "10", 10, ["0", "ten"]),
           ("STAGETRACE_KEEP_DAYS", "keep_days", "0.5", 0.5, ["0", "-2", "nan", "inf"]),
           ("STAGETRACE_KEEP_MB", "keep_mb", "10", 10.0, ["0", "big"]),
           ("STAGETRACE_WRITER_QUEUE", "writer_queue", "8", 8, ["0", "x", "100001"]),
           ("STAGETRACE_METRICS_PORT", "metrics_port", "9400", 9400, ["-1", "65536", "http"]),
           ("STAGETRACE_HISTORY_KEEP", "history_keep", "500", 500, ["0", "many"]),
           ("STAGETRACE_HISTORY_DAYS", "history_days", "7.5", 7.5, ["0", "nan"])]
FLAGS = [("STAGETRACE_DISABLE", "disabled", False), ("STAGETRACE_NVTX", "nvtx", True),
         ("STAGETRACE_SUMMARY", "summary", True), ("STAGETRACE_LIVE", "live", True), ("STAGETRACE_GPU", "gpu", True),
         ("STAGETRACE_REPORT", "report", True), ("STAGETRACE_NVML", "nvml", True),
         ("STAGETRACE_METRICS", "metrics", True), ("STAGETRACE_HISTORY", "history", True)]


@pytest.mark.parametrize("name, field, good, parsed, bad", NUMBERS)
def test_every_number_is_parsed_within_bounds(monkeypatch, name, field, good, parsed, bad):
    default = getattr(Settings.from_env([]), field)
    monkeypatch.setenv(name, good)
    problems = []
    assert getattr(Settings.from_env(problems), field) == parsed and problems == []
    for value in bad:
        monkeypatch.setenv(name, value)
        problems = []
        assert getattr(Settings.from_env(problems), field) == default
        assert len(problems) == 1 and problems[0].startswith(f"{name}={value!r} is not ") and "default" in problems[0]


@pytest.mark.parametrize("name, field, default", FLAGS)
def test_every_switch_understands_its_words_and_refuses_the_rest(monkeypatch, name, field, default):
    for word, value in (("1", True), ("yes", True), ("Y", True), ("on", True), ("true", True), ("0", False),
                        ("no", False), ("n", False), ("off", False), ("none", False), ("FALSE", False)):
        monkeypatch.setenv(name, word)
        problems = []
        assert getattr(Settings.from_env(problems), field) is value and problems == [], word
    monkeypatch.setenv(name, "perhaps")
    problems = []
    assert getattr(Settings.from_env(problems), field) is default
    assert problems == [f"{name}='perhaps' is not a switch (1/0, true/false, yes/no, on/off"
                        + (", full" if name == "STAGETRACE_SUMMARY" else "")
                        + f"): using the default ({'on' if default else 'off'})"]


def test_the_output_folder_expands_the_home_and_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WHERE", "traces")
    monkeypatch.setenv("STAGETRACE_OUTPUT_DIR", "~/st/$WHERE")
    assert Settings.from_env([]).output_dir == str(tmp_path / "st" / "traces")


def test_a_bad_value_is_logged_once_by_name_and_stagetrace_still_installs(monkeypatch, caplog):
    import logging

    monkeypatch.setenv("STAGETRACE_NVML_HZ", "fast")
    with caplog.at_level(logging.WARNING, logger="stagetrace"):
        settings = Settings.from_env()
    assert settings.nvml_hz == 10 and not settings.disabled
    assert [r.getMessage() for r in caplog.records] == [
        "StageTrace: STAGETRACE_NVML_HZ='fast' is not a whole number from 1 to 1,000: using the default (10)"]


@pytest.mark.parametrize("value, expected", [("", ""), ("  ", ""), ("0", None), ("off", None), ("None", None),
                                             ("no", None), ("/var/cache/st.sqlite3", "/var/cache/st.sqlite3")])
def test_the_hash_cache_is_a_place_or_off(monkeypatch, value, expected):
    monkeypatch.setenv("STAGETRACE_HASH_CACHE", value)
    problems = []
    assert Settings.from_env(problems).hash_cache == expected and problems == []


def test_the_hash_cache_expands_the_home_and_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CACHES", "caches")
    monkeypatch.setenv("STAGETRACE_HASH_CACHE", "~/$CACHES/h.sqlite3")
    assert Settings.from_env().hash_cache == str(tmp_path / "caches" / "h.sqlite3")
    monkeypatch.setenv("STAGETRACE_HASH_CACHE", "relative/h.sqlite3")
    assert Settings.from_env().hash_cache == os.path.abspath("relative/h.sqlite3")
