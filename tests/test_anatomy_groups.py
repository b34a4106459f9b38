"""The C reader's prefix grouping (read_safetensors_header(..., group_by=...), csrc/st_sfgroup.c)
against the Python grouping classify() uses, on real safetensors files: the same groups, keys,
shapes and totals, and the same anatomy for every family fixture. Its prefix matcher is checked
against the regex anatomy.py compiles for the same pattern."""

import os
import re
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from test_inspect import FIXTURES, write_fixture_file

from comfy_nodes.analysis import anatomy
from comfy_nodes.analysis.anatomy import PREFIX_PATTERNS, classify, classify_groups, read_anatomy

FIXTURE_FILES = sorted(f for f in os.listdir(FIXTURES) if f.endswith(".json"))


def python_groups(native, path):
    """What anatomy._group_by_prefix makes of the file's plain tensor list, as C-reader tuples."""
    header = native.read_safetensors_header(path)
    tensors = {name: (dtype, shape, end - begin) for name, dtype, shape, begin, end in header["tensors"]}
    return anatomy._group_by_prefix(tensors)


def by_prefix(groups):
    """Groups by prefix, each group's keys as a plain dict (the reader gives a GroupKeys mapping)."""
    return {g[0]: (g[0], g[1], dict(g[2]), *g[3:]) for g in groups}


@pytest.mark.parametrize("fixture", FIXTURE_FILES)
def test_c_grouping_equals_python_grouping_on_every_family(native, tmp_path, fixture):
    path = write_fixture_file(fixture, tmp_path / "model.safetensors")
    ours = native.read_safetensors_header(path, group_by=PREFIX_PATTERNS)
    assert "tensors" not in ours
    assert by_prefix(ours["groups"]) == by_prefix(python_groups(native, path))
    plain = native.read_safetensors_header(path)
    tensors = {name: (dtype, shape, end - begin) for name, dtype, shape, begin, end in plain["tensors"]}
    fast, _ = read_anatomy(native, path)
    assert fast.to_dict() == classify(tensors, plain["metadata"]).to_dict()
    assert fast.to_dict() == classify_groups(ours["groups"], ours["metadata"]).to_dict()


def test_groups_of_an_all_in_one_checkpoint(native, tmp_path):
    path = str(tmp_path / "sdxl.safetensors")
    save_file({
        "model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 2, 3, 3), np.float16),
        "model.diffusion_model.out.2.bias": np.zeros((4,), np.float32),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": np.zeros((8,), np.float16),
        "conditioner.embedders.1.model.ln_final.weight": np.zeros((16,), np.float16),
        "conditioner.embedders.12.model.ln_final.weight": np.zeros((2,), np.float16),
        "first_stage_model.decoder.conv_in.weight": np.zeros((2, 2), np.float16),
        "text_encoders.t5xxl.transformer.shared.weight": np.zeros((3, 5), np.uint8),
        "lonely": np.zeros((), np.float64),
    }, path)
    raw = {g[0]: g for g in native.read_safetensors_header(path, group_by=PREFIX_PATTERNS)["groups"]}
    groups = by_prefix(raw.values())
    assert set(groups) == {"model.diffusion_model.", "conditioner.embedders.0.", "conditioner.embedders.1.",
                           "conditioner.embedders.12.", "first_stage_model.", "text_encoders.t5xxl.", ""}
    prefix, pattern, keys, tensors, parameters, nbytes, dtypes = raw["model.diffusion_model."]
    assert pattern == PREFIX_PATTERNS.index("model.diffusion_model.")
    assert dict(keys) == {"input_blocks.0.0.weight": (4, 2, 3, 3), "out.2.bias": (4,)}
    assert "out.2.bias" in keys and "out.2.weight" not in keys and 3 not in keys and len(keys) == 2
    assert keys["out.2.bias"] == (4,) and keys.get("nope", "x") == "x" and sorted(keys) == sorted(keys.keys())
    with pytest.raises(KeyError):
        keys["model.diffusion_model.out.2.bias"]  # names are relative to the prefix
    assert keys.matching("input_blocks.", ".weight") == ["input_blocks.0.0.weight"]
    assert (tensors, parameters, nbytes) == (2, 76, 72 * 2 + 4 * 4)
    assert dtypes == {"F16": 144, "F32": 16}
    assert dict(groups["text_encoders.t5xxl."][2]) == {"transformer.shared.weight": (3, 5)}
    assert groups["text_encoders.t5xxl."][6] == {"U8": 15}
    assert groups[""][1] == -1 and dict(groups[""][2]) == {"lonely": ()} and groups[""][4] == 1
    # a name under another group's prefix is not in the unprefixed group, though its name starts there
    assert "model.diffusion_model.out.2.bias" not in raw[""][2]


def test_group_by_rejects_what_is_not_a_sequence_of_str(native, tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_file({"a": np.zeros((1,), np.float16)}, path)
    with pytest.raises(TypeError):
        native.read_safetensors_header(path, group_by=[b"bytes."])
    with pytest.raises(TypeError):
        native.read_safetensors_header(path, group_by=3)
    with pytest.raises(TypeError):  # keyword-only
        native.read_safetensors_header(path, 1000, PREFIX_PATTERNS)
    assert native.read_safetensors_header(path, group_by=())["groups"][0][0] == ""


def test_a_bad_file_raises_the_same_error_with_or_without_grouping(native, tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"a": np.zeros((64,), np.float32)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(native.SafetensorsError) as plain:
        native.read_safetensors_header(str(path))
    with pytest.raises(native.SafetensorsError) as grouped:
        native.read_safetensors_header(str(path), group_by=PREFIX_PATTERNS)
    assert (plain.value.status, plain.value.offset) == (grouped.value.status, grouped.value.offset) \
        == ("OUT_OF_RANGE", len(data) - 10)


# --- The matcher against the regex, on random names ---

# Pieces that make the patterns' edge cases likely: digits (incl. non-ASCII ones the regex must
# not take as "#"), dots, newlines, multi-byte characters, and the patterns' own literals.
PIECES = st.sampled_from(["model.", "diffusion_model.", "text_encoders.", "conditioner.", "embedders.", "vae.",
                          "first_stage_model.", "0", "1", "12", "007", "٣", ".", "..", "\n", "é", "中", "x", "_"])
NAMES = st.lists(PIECES, min_size=1, max_size=8).map("".join)
PATTERNS = st.lists(st.sampled_from(["#", "*", ".", "x", "text_encoders.", "conditioner.embedders.", "0", "é"]),
                    min_size=1, max_size=5).map("".join).filter(lambda p: p.count("*") <= 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAMES, min_size=1, max_size=12, unique=True),
       patterns=st.lists(PATTERNS, min_size=1, max_size=3))
def test_prefix_matcher_agrees_with_the_regex(native, tmp_path_factory, names, patterns):
    path = str(tmp_path_factory.mktemp("m") / "m.safetensors")
    save_file({name: np.zeros((1,), np.float16) for name in names}, path)
    expected: dict[str, set[str]] = {}
    for name in names:
        prefix = ""
        for pattern in patterns:
            m = anatomy._compile(pattern)[1].match(name)
            if m:
                prefix = m.group(0)
                break
        expected.setdefault(prefix, set()).add(name[len(prefix):])
    groups = native.read_safetensors_header(path, group_by=patterns)["groups"]
    assert {g[0]: set(g[2]) for g in groups} == expected


def test_compiled_patterns_take_ascii_digits_only():
    regex = anatomy._compile("conditioner.embedders.#.")[1]
    assert regex.match("conditioner.embedders.12.x").group(0) == "conditioner.embedders.12."
    assert regex.match("conditioner.embedders.٣.x") is None
    assert anatomy._compile("text_encoders.*.")[1].match("text_encoders.a\nb.c").group(0) == "text_encoders.a\nb."
    assert set(string.digits) == {c for c in "0123456789٣" if re.fullmatch("[0-9]", c)}
