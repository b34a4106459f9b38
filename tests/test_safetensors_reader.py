"""The C safetensors header reader against the real `safetensors` library
(differential), and against malformed files (a clear error naming the file
and the byte offset, never a crash or a hang)."""

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "U8": np.uint8,
                "I16": np.int16, "I32": np.int32, "I64": np.int64, "BOOL": np.bool_, "U16": np.uint16,
                "U32": np.uint32, "U64": np.uint64}


def library_view(path):
    """What the safetensors library reads: {name: (dtype, shape)}, metadata."""
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata()
        tensors = {}
        for name in f.keys():
            sl = f.get_slice(name)
            tensors[name] = (sl.get_dtype(), tuple(sl.get_shape()))
    return tensors, metadata


names = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24).filter(
    lambda s: s != "__metadata__")
shapes = st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=st.dictionaries(names, st.tuples(st.sampled_from(sorted(NUMPY_DTYPES)), shapes), max_size=12),
       metadata=st.one_of(st.none(), st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4)))
def test_differential_against_safetensors_library(native, tmp_path_factory, tensors, metadata):
    path = str(tmp_path_factory.mktemp("diff") / "f.safetensors")
    arrays = {name: np.zeros(shape, dtype=NUMPY_DTYPES[dtype]) for name, (dtype, shape) in tensors.items()}
    save_file(arrays, path, metadata=metadata)
    try:
        theirs, their_meta = library_view(path)
    except Exception:  # e.g. safetensors 0.8 writes '{},"__metadata__":{}}' for no tensors + {} metadata
        with pytest.raises(native.SafetensorsError):
            native.read_safetensors_header(path)
        return
    ours = native.read_safetensors_header(path)
    assert {t[0]: (t[1], t[2]) for t in ours["tensors"]} == theirs
    assert ours["metadata"] == their_meta
    assert ours["file_size"] == os.path.getsize(path)
    assert 8 + ours["header_bytes"] + ours["data_bytes"] == ours["file_size"]
    begins = [t[3] for t in ours["tensors"]]
    assert begins == sorted(begins)  # file order


def test_fp8_bf16_and_scalars_with_torch(native, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    tensors = {"w8": torch.zeros(4, 3, dtype=torch.float8_e4m3fn), "w5": torch.zeros(2, dtype=torch.float8_e5m2),
               "b": torch.zeros(7, dtype=torch.bfloat16), "scalar": torch.tensor(3.0), "empty": torch.zeros(0, 5)}
    path = str(tmp_path / "t.safetensors")
    save_torch(tensors, path, metadata={"format": "pt"})
    ours = {t[0]: (t[1], t[2], t[4] - t[3]) for t in native.read_safetensors_header(path)["tensors"]}
    assert ours == {"w8": ("F8_E4M3", (4, 3), 12), "w5": ("F8_E5M2", (2,), 2), "b": ("BF16", (7,), 14),
                    "scalar": ("F32", (), 4), "empty": ("F32", (0, 5), 0)}
    with safe_open(path, framework="pt") as f:
        assert set(f.keys()) == set(ours) and f.metadata() == {"format": "pt"}


def raw_file(tmp_path, header, data=b"", *, length=None, name="m.safetensors"):
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return str(path)


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


MALFORMED = [
    # (id, header or bytes, data, length override, status, offset (None: don't check))
    ("too-short", None, b"", None, "TOO_SHORT", 0),
    ("huge-length", {"a": entry()}, bytes(8), 1 << 40, "HEADER_TOO_LARGE", 0),
    ("length-past-eof", {"a": entry()}, bytes(8), 10_000, "HEADER_BEYOND_EOF", 0),
    ("bad-json", b'{"a": {"dtype": "F32",', b"", None, "BAD_JSON", None),
    ("trailing-garbage", b'{} x', b"", None, "BAD_JSON", 11),
    ("not-object", b"[1, 2]", b"", None, "NOT_AN_OBJECT", 8),
    ("entry-not-object", {"a": 5}, b"", None, "BAD_ENTRY", None),
    ("missing-field", {"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "BAD_ENTRY", None),
    ("unknown-dtype", {"a": entry(dtype="F13")}, bytes(8), None, "BAD_DTYPE", None),
    ("negative-dim", b'{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}', bytes(8), None,
     "BAD_SHAPE", None),
    ("float-dim", b'{"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}', bytes(8), None,
     "BAD_SHAPE", None),
    ("too-many-dims", {"a": entry(shape=(1,) * 17, offsets=(0, 4))}, bytes(4), None, "BAD_SHAPE", None),
    ("reversed-offsets", {"a": entry(offsets=(8, 0))}, bytes(8), None, "BAD_OFFSETS", None),
    ("three-offsets", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}', bytes(9), None,
     "BAD_OFFSETS", None),
    ("wrong-size", {"a": entry(shape=(3,))}, bytes(8), None, "SIZE_MISMATCH", None),
    ("overflowing-shape", {"a": entry(shape=(1 << 40, 1 << 40))}, bytes(8), None, "SIZE_MISMATCH", None),
    ("overlap", {"a": entry(), "b": entry(offsets=(4, 12))}, bytes(12), None, "OVERLAP", None),
    ("out-of-range", {"a": entry(offsets=(0, 8)), "b": entry(offsets=(8, 16))}, bytes(12), None,
     "OUT_OF_RANGE", None),
    ("duplicate-name", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                       b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', bytes(16), None,
     "DUPLICATE_KEY", None),
    ("duplicate-field", b'{"a": {"dtype": "F32", "dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}',
     bytes(8), None, "DUPLICATE_KEY", None),
    ("metadata-not-strings", {"__metadata__": {"k": 1}}, b"", None, "BAD_METADATA", None),
    ("deep-nesting", b'{"a": {"x": ' + b"[" * 200 + b"]" * 200 + b', "dtype": "F32", "shape": [2], '
                     b'"data_offsets": [0, 8]}}', bytes(8), None, "BAD_JSON", None),
    ("non-utf8-name", b'{"\xff": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8), None,
     "BAD_JSON", 10),
    ("lone-surrogate", b'{"\\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8), None,
     "BAD_JSON", 10),
    ("control-char", b'{"a\x01": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8), None,
     "BAD_JSON", 11),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_files_name_the_place(native, tmp_path, case):
    _, header, data, length, status, offset = case
    if header is None:
        path = str(tmp_path / "short.safetensors")
        open(path, "wb").write(b"\x01\x02")
    else:
        path = raw_file(tmp_path, header, data, length=length)
    with pytest.raises(native.SafetensorsError) as err:
        native.read_safetensors_header(path)
    e = err.value
    assert e.status == status, str(e)
    assert e.path == path and str(e).startswith(f"{path}: byte offset {e.offset}: ")
    assert 0 <= e.offset <= os.path.getsize(path)
    if offset is not None:
        assert e.offset == offset, str(e)


def test_offsets_point_at_the_offending_bytes(native, tmp_path):
    header = b'{"good": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "bad": {"dtype": "F99"'
    header += b', "shape": [2], "data_offsets": [8, 16]}}'
    path = raw_file(tmp_path, header, bytes(16))
    with pytest.raises(native.SafetensorsError) as err:
        native.read_safetensors_header(path)
    raw = open(path, "rb").read()
    assert raw[err.value.offset:].startswith(b'"F99"') and err.value.detail == "bad"


def test_overlap_points_at_the_second_tensors_data(native, tmp_path):
    header = json.dumps({"a": entry(), "b": entry(offsets=(4, 12))}).encode()
    path = raw_file(tmp_path, header, bytes(12))
    with pytest.raises(native.SafetensorsError) as err:
        native.read_safetensors_header(path)
    assert err.value.offset == 8 + len(header) + 4 and err.value.detail == "b overlaps a"


def test_truncated_download_is_out_of_range(native, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    path = str(tmp_path / "full.safetensors")
    save_torch({"w": torch.zeros(1000)}, path)
    data = open(path, "rb").read()
    cut = tmp_path / "partial.safetensors"
    cut.write_bytes(data[:-100])
    with pytest.raises(native.SafetensorsError) as err:
        native.read_safetensors_header(str(cut))
    assert err.value.status == "OUT_OF_RANGE" and err.value.offset == len(data) - 100
    assert "truncated or partial download" in str(err.value) and "w ends at data byte 4000" in str(err.value)


def test_missing_file_and_directory(native, tmp_path):
    with pytest.raises(native.SafetensorsError, match="cannot open the file: No such file"):
        native.read_safetensors_header(str(tmp_path / "nope.safetensors"))
    with pytest.raises(native.SafetensorsError, match="Is a directory"):
        native.read_safetensors_header(str(tmp_path))


def test_reads_only_the_header(native, tmp_path):
    """A file whose data section is a sparse hole of 20 GB reads instantly."""
    header = json.dumps({"w": entry(dtype="U8", shape=(20 << 30,), offsets=(0, 20 << 30))}).encode()
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + (20 << 30))
    result = native.read_safetensors_header(str(path))
    assert result["tensors"][0][2] == (20 << 30,) and result["data_bytes"] == 20 << 30


def test_padding_and_empty_header(native, tmp_path):
    assert native.read_safetensors_header(raw_file(tmp_path, b"{}      "))["tensors"] == []
    meta_null = native.read_safetensors_header(raw_file(tmp_path, b'{"__metadata__": null}', name="n.st"))
    assert meta_null["metadata"] is None
