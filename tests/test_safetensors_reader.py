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
    ("reversed-offsets", {"a": entry(offsets=(8, 0))}, bytes(8), None, "BAD_OFFSETS", None),
    ("three-offsets", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}', bytes(9), None,
     "BAD_OFFSETS", None),
    ("wrong-size", {"a": entry(shape=(3,))}, bytes(8), None, "SIZE_MISMATCH", None),
    ("overflowing-shape", {"a": entry(shape=(1 << 40, 1 << 40))}, bytes(8), None, "SIZE_MISMATCH", None),
    ("overlap", {"a": entry(), "b": entry(offsets=(4, 12))}, bytes(12), None, "OVERLAP", None),
    ("out-of-range", {"a": entry(offsets=(0, 8)), "b": entry(offsets=(8, 16))}, bytes(12), None,
     "OUT_OF_RANGE", None),
    # a name given twice keeps its last entry (as the library's map): the first 8 bytes then belong to no tensor
    ("duplicate-name", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                       b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', bytes(16), None,
     "GAP", None),
    ("gap-between", {"a": entry(), "b": entry(offsets=(12, 20))}, bytes(20), None, "GAP", None),
    ("gap-before-first", {"a": entry(offsets=(4, 12))}, bytes(12), None, "GAP", None),
    ("trailing-bytes", {"a": entry()}, bytes(9), None, "TRAILING_DATA", None),
    ("empty-header-trailing", b"{}", b"x", None, "TRAILING_DATA", 10),
    ("zero-size-inside", {"a": entry(), "b": entry(shape=(0,), offsets=(4, 4))}, bytes(8), None, "OVERLAP", None),
    ("odd-nibbles", {"a": entry(dtype="F4", shape=(3,), offsets=(0, 2))}, bytes(2), None, "SIZE_MISMATCH", None),
    ("duplicate-field", b'{"a": {"dtype": "F32", "dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}',
     bytes(8), None, "DUPLICATE_KEY", None),
    ("metadata-not-strings", {"__metadata__": {"k": 1}}, b"", None, "BAD_METADATA", None),
    ("deep-nesting", b'{"a": {"x": ' + b"[" * 126 + b"]" * 126 + b', "dtype": "F32", "shape": [2], '
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


# --- The verdict of the real library: what it refuses is refused, what it loads is read ---

def library_accepts(path) -> bool:
    """Whether safetensors (and so ComfyUI, which opens files with safe_open / load_file) opens the file."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            list(f.keys())
        return True
    except Exception:  # the library's SafetensorError, or an OSError for a short file
        return False


def reader_accepts(native, path) -> bool:
    """Our verdict; a refusal must be the one clear error naming the file and the byte offset."""
    try:
        native.read_safetensors_header(str(path))
        return True
    except native.SafetensorsError as exc:
        assert str(exc).startswith(f"{path}: byte offset {exc.offset}: "), str(exc)
        return False


def raw_header(text: str) -> bytes:
    return text.encode()


def E(dtype="F32", shape=(2,), offsets=(0, 8)):
    return f'{{"dtype": "{dtype}", "shape": {json.dumps(list(shape))}, "data_offsets": [{offsets[0]}, {offsets[1]}]}}'


def H(*entries) -> str:
    """A header's text from (name as JSON string text, entry text) pairs, duplicates and all."""
    return "{" + ", ".join(f'"{name}": {text}' for name, text in entries) + "}"


# (id, header text, data bytes), each run through the library and the reader: serde's quirks included
LIBRARY_CASES = [
    ("duplicate-name-same-bytes", H(("a", E()), ("a", E())), 8),
    ("duplicate-name-last-wins", H(("a", E(offsets=(8, 16))), ("a", E())), 8),
    ("duplicate-name-gap", H(("a", E()), ("a", E(offsets=(8, 16)))), 16),
    ("duplicate-field", '{"a": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("duplicate-metadata", '{"__metadata__": {}, "__metadata__": {}}', 0),
    ("duplicate-metadata-null", '{"__metadata__": null, "__metadata__": null}', 0),
    ("duplicate-metadata-key", '{"__metadata__": {"k": "1", "k": "2"}}', 0),
    ("entry-as-array", '{"a": ["F32", [2], [0, 8]]}', 8),
    ("entry-as-array-4", '{"a": ["F32", [2], [0, 8], 1]}', 8),
    ("entry-as-array-2", '{"a": ["F32", [2]]}', 8),
    ("entry-as-array-dtype-map", '{"a": [{"F32": null}, [2], [0, 8]]}', 8),
    ("entry-null", '{"a": null}', 0),
    ("dtype-map", '{"a": {"dtype": {"F32": null}, "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("dtype-map-escaped", '{"a": {"dtype": {"F\\u0033\\u0032" : null }, "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("dtype-map-empty", '{"a": {"dtype": {}, "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("dtype-map-two", '{"a": {"dtype": {"F32": null, "F16": null}, "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("dtype-map-value", '{"a": {"dtype": {"F32": 1}, "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("dtype-map-object", '{"a": {"dtype": {"F32": {}}, "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("dtype-list", '{"a": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("dtype-lowercase", H(("a", E(dtype="f32"))), 8),
    ("fields-any-order", '{"a": {"shape": [2], "data_offsets": [0, 8], "dtype": "F32"}}', 8),
    ("unknown-fields-twice", '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1, "x": [{}]}}', 8),
    ("minus-zero", '{"a": {"dtype": "F32", "shape": [-0, 2], "data_offsets": [0, 0]}}', 0),
    ("float-offset", '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}', 8),
    ("exponent-offset", '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8e0]}}', 8),
    ("leading-zero", '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [00, 8]}}', 8),
    ("trailing-comma", '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8,]}}', 8),
    ("offsets-object", '{"a": {"dtype": "F32", "shape": [0], "data_offsets": {"0": 0, "1": 0}}}', 0),
    ("shape-object", '{"a": {"dtype": "F32", "shape": {}, "data_offsets": [0, 0]}}', 0),
    ("dim-2^64", '{"a": {"dtype": "F32", "shape": [18446744073709551616], "data_offsets": [0, 0]}}', 0),
    ("dim-u64-max-times-0", '{"a": {"dtype": "F32", "shape": [0, 18446744073709551615], "data_offsets": [0, 0]}}', 0),
    ("overflow-before-0", '{"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 0], "data_offsets": [0, 0]}}', 0),
    ("gap", H(("a", E()), ("b", E(offsets=(12, 20)))), 20),
    ("trailing-bytes", H(("a", E())), 9),
    ("start-not-zero", H(("a", E(offsets=(4, 12)))), 12),
    ("overlap", H(("a", E()), ("b", E(offsets=(4, 12)))), 12),
    ("same-offsets", H(("a", E()), ("b", E())), 8),
    ("zero-size-tensors", H(("a", E(shape=(0,), offsets=(0, 0))), ("b", E(shape=(0,), offsets=(0, 0))), ("c", E())), 8),
    ("zero-size-at-end", H(("a", E()), ("b", E(shape=(0, 3), offsets=(8, 8)))), 8),
    ("zero-size-past-end", H(("a", E()), ("b", E(shape=(0,), offsets=(9, 9)))), 8),
    ("zero-size-inside", H(("a", E()), ("b", E(shape=(0,), offsets=(4, 4)))), 8),
    ("reversed-zero", H(("a", E(shape=(0,), offsets=(8, 0)))), 8),
    ("17-dims", H(("a", E(shape=(1,) * 17, offsets=(0, 4)))), 4),
    ("100-dims", H(("a", E(shape=(1,) * 99 + (3,), offsets=(0, 12)))), 12),
    ("out-of-order", H(("b", E(offsets=(8, 16))), ("a", E())), 16),
    ("empty", "{}", 0),
    ("empty-trailing", "{}", 1),
    ("whitespace-around", "  {} \n\t\r ", 0),
    ("nul-padding", "{}\x00", 0),
    ("bom", "\ufeff{}", 0),
    ("top-array", "[]", 0),
    ("top-trailing-comma", '{"__metadata__": {"a": "b"},}', 0),
    ("metadata-null", '{"__metadata__": null}', 0),
    ("metadata-empty", '{"__metadata__": {}}', 0),
    ("metadata-array", '{"__metadata__": ["a"]}', 0),
    ("metadata-null-value", '{"__metadata__": {"a": null}}', 0),
    ("metadata-escaped-name", '{"__meta\\u0064ata__": {"k": "v"}}', 0),
    ("lone-surrogate-value", '{"__metadata__": {"a": "\\ud800"}}', 0),
    ("surrogate-pair-name", H(("\\ud83d\\ude00", E())), 8),
    ("nul-in-name", H(("\\u0000", E(shape=(0,), offsets=(0, 0)))), 0),
    ("f4-even", H(("a", E(dtype="F4", shape=(4,), offsets=(0, 2)))), 2),
    ("f4-odd", H(("a", E(dtype="F4", shape=(3,), offsets=(0, 2)))), 2),
    ("f6", H(("a", E(dtype="F6_E2M3", shape=(4,), offsets=(0, 3)))), 3),
    ("fnuz", H(("a", E(dtype="F8_E5M2FNUZ", shape=(4,), offsets=(0, 4)))), 4),
    ("c64", H(("a", E(dtype="C64", shape=(1,), offsets=(0, 8)))), 8),
] + [(f"number-{x}", H(("a", E()[:-1] + f', "x": [{x}]}}')), 8)  # serde_json: a double must hold it
     for x in ("1e308", "1e309", "-1e400", "1.7976931348623157e308", "1.7976931348623159e308", "17976931348623159e292",
               "0.00017976931348623159e313", "123456789012345678901234567890", "1e-400", "0.0", "-0")
] + [(f"nesting-{depth}", H(("a", E()[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}")), 8)
     for depth in (64, 65, 125, 126, 200)]


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_verdict_equals_the_librarys(native, tmp_path, case):
    _, header, data = case
    path = raw_file(tmp_path, header.encode(), bytes(data))
    assert reader_accepts(native, path) == library_accepts(path)
    if library_accepts(path):
        theirs, their_meta = library_view(path)
        ours = native.read_safetensors_header(path)
        assert {t[0]: (t[1], t[2]) for t in ours["tensors"]} == theirs and ours["metadata"] == their_meta


def test_accepted_edge_cases_read_whole(native, tmp_path):
    """What the library accepts and a model could hold: 17 dims, zero-size tensors, an empty file."""
    path = raw_file(tmp_path, (H(("a", E(shape=(1,) * 16 + (2,))), ("z", E(shape=(0, 7), offsets=(8, 8)))))
                    .encode(), bytes(8))
    ours = {t[0]: t[2] for t in native.read_safetensors_header(path)["tensors"]}
    assert ours == {"a": (1,) * 16 + (2,), "z": (0, 7)}
    assert native.read_safetensors_header(raw_file(tmp_path, b"{}", name="e.st"))["tensors"] == []


def test_gap_and_trailing_bytes_name_the_place(native, tmp_path):
    header = (H(("a", E()), ("b", E(offsets=(12, 20))))).encode()
    path = raw_file(tmp_path, header, bytes(20))
    with pytest.raises(native.SafetensorsError) as err:
        native.read_safetensors_header(path)
    assert err.value.status == "GAP" and err.value.offset == 8 + len(header) + 8
    assert "4 bytes no tensor covers between a and b" in str(err.value)
    header = (H(("a", E()))).encode()
    path = raw_file(tmp_path, header, bytes(8) + b"junk", name="t.safetensors")
    with pytest.raises(native.SafetensorsError) as err:
        native.read_safetensors_header(path)
    assert err.value.status == "TRAILING_DATA" and err.value.offset == 8 + len(header) + 8
    assert "4 bytes after the last tensor" in str(err.value)


def test_special_files_are_refused_without_blocking(native, tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(native.SafetensorsError, match="Invalid argument"):
        native.read_safetensors_header(str(fifo))  # would block in open() without O_NONBLOCK
    with pytest.raises(native.SafetensorsError, match="Invalid argument"):
        native.read_safetensors_header("/dev/zero")


# Mutations of a file the library wrote: each is (kind, a position or amount drawn as a fraction, a byte)
MUTATIONS = st.tuples(
    st.sampled_from(["flip", "truncate", "append", "insert-data", "length", "json"]),
    st.floats(min_value=0, max_value=1, allow_nan=False), st.integers(min_value=0, max_value=255))
JSON_EDITS = ["offset+", "offset-", "end+", "swap-offsets", "drop", "duplicate", "dtype", "add-dim", "zero-dim",
              "as-array", "dtype-map", "extra-field", "pad", "rename-to-dup"]


def mutate(raw: bytes, kind: str, where: float, byte: int) -> bytes:
    n = struct.unpack("<Q", raw[:8])[0]
    if kind == "flip":  # any byte of the prefix or the header
        at = int(where * (8 + n - 1))
        return raw[:at] + bytes([byte]) + raw[at + 1:]
    if kind == "truncate":
        return raw[:int(where * len(raw))]
    if kind == "append":
        return raw + bytes([byte]) * (1 + int(where * 8))
    if kind == "insert-data":
        at = 8 + n + int(where * (len(raw) - 8 - n))
        return raw[:at] + bytes([byte]) + raw[at:]
    if kind == "length":
        return struct.pack("<Q", max(0, n + int((where - 0.5) * 16))) + raw[8:]
    header = json.loads(raw[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    edit = JSON_EDITS[byte % len(JSON_EDITS)]
    data = raw[8 + n:]
    if names:
        name = names[int(where * (len(names) - 1))]
        e = header[name]
        if edit == "offset+":
            e["data_offsets"][0] += 1 + byte % 4
        elif edit == "offset-":
            e["data_offsets"][0] = max(0, e["data_offsets"][0] - 1 - byte % 4)
        elif edit == "end+":
            e["data_offsets"][1] += 1 + byte % 4
        elif edit == "swap-offsets":
            e["data_offsets"].reverse()
        elif edit == "drop":
            del header[name]
        elif edit == "dtype":
            e["dtype"] = ["F16", "BF16", "U8", "F64", "F4", "I64"][byte % 6]
        elif edit == "add-dim":
            e["shape"].append(1 + byte % 2)
        elif edit == "zero-dim":
            e["shape"].insert(0, 0)
        elif edit == "as-array":
            header[name] = [e["dtype"], e["shape"], e["data_offsets"]]
        elif edit == "dtype-map":
            e["dtype"] = {e["dtype"]: None}
        elif edit == "extra-field":
            e["x" * (1 + byte % 3)] = [[byte]]
    body = json.dumps(header)
    if edit == "duplicate" and names:  # the same entry named twice, as raw JSON
        body = body[:-1] + f", {json.dumps(names[0])}: {json.dumps(header[names[0]])}}}"
    if edit == "rename-to-dup" and len(names) > 1:
        body = body.replace(json.dumps(names[-1]) + ":", json.dumps(names[0]) + ":")
    if edit == "pad":
        body += " " * (byte % 9)
    return struct.pack("<Q", len(body.encode())) + body.encode() + data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=st.dictionaries(st.text(alphabet="abcxyz.0", min_size=1, max_size=6),
                               st.tuples(st.sampled_from(["F16", "F32", "U8", "I64"]), shapes), max_size=5),
       mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_mutated_files_verdict_equals_the_librarys(native, tmp_path_factory, tensors, mutations):
    """Files written by the library, then corrupted: the reader refuses exactly what the library refuses, and
    reads what it accepts as the library does."""
    path = tmp_path_factory.mktemp("mut") / "m.safetensors"
    save_file({name: np.ones(shape, dtype=NUMPY_DTYPES[dtype]) for name, (dtype, shape) in tensors.items()},
              str(path))
    raw = path.read_bytes()
    for kind, where, byte in mutations:
        try:
            raw = mutate(raw, kind, where, byte)
        except (ValueError, UnicodeDecodeError, IndexError, KeyError, TypeError, AttributeError, struct.error):
            break  # a JSON edit on a header an earlier mutation broke: test what is there
    path.write_bytes(raw)
    accepted = library_accepts(path)
    assert reader_accepts(native, path) == accepted, raw[:300]
    if accepted:
        theirs, _ = library_view(path)
        assert {t[0]: (t[1], t[2]) for t in native.read_safetensors_header(str(path))["tensors"]} == theirs
