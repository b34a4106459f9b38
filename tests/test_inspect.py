"""`stagetrace inspect` on real safetensors files: each built from a family
fixture's header with a sparse data section (a valid file the safetensors
library opens, without gigabytes of zeros)."""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
from safetensors import safe_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "families")
BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8,
        "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8}


def write_fixture_file(fixture: str, path) -> str:
    spec = json.load(open(os.path.join(FIXTURES, fixture)))
    header, offset = {}, 0
    for name, (dtype, shape) in spec["tensors"].items():
        count = 1
        for d in shape:
            count *= d
        size = count * BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if spec.get("metadata"):
        header["__metadata__"] = spec["metadata"]
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body)
        f.truncate(8 + len(body) + offset)
    return str(path)


def inspect(*args):
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "inspect", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_diffusion_only_file_names_the_right_loaders(native, tmp_path):
    path = write_fixture_file("qwen_image_diffusion_only.json", tmp_path / "qwen_image_fp8.safetensors")
    with safe_open(path, framework="numpy") as f:  # a file the real library opens
        assert len(list(f.keys())) > 10
    code, out, err = inspect(path)
    assert code == 1, err
    assert "Qwen-Image" in out or "qwen_image" in out
    for needed in ("UNETLoader", "CLIPLoader", "qwen_image", "VAELoader", "qwen_image_fp8.safetensors"):
        assert needed in out, needed
    code, out, _ = inspect("--json", path)
    (report,) = json.loads(out)
    assert code == 1 and report["status"] == "incomplete"
    assert report["anatomy"]["family"] == "qwen_image"


def test_complete_checkpoint_exits_zero(native, tmp_path):
    path = write_fixture_file("sd15_checkpoint.json", tmp_path / "sd15.safetensors")
    code, out, err = inspect(path)
    assert code == 0, out + err


def test_unreadable_file_exits_two_with_the_offset(native, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(struct.pack("<Q", 5) + b"{oops")
    code, out, _ = inspect(bad)
    assert code == 2 and f"{bad}: byte offset 9:" in out


def test_models_dir_flags_misplaced_truncated_duplicate_and_unreadable(native, tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "vae").mkdir()
    write_fixture_file("qwen_image_diffusion_only.json", models / "checkpoints" / "qwen.safetensors")
    complete = write_fixture_file("sd15_checkpoint.json", models / "checkpoints" / "sd15.safetensors")
    shutil.copy(complete, models / "checkpoints" / "sd15-copy.safetensors")
    vae = write_fixture_file("vae_sd_kl_f8.json", tmp_path / "vae.safetensors")
    data = open(vae, "rb").read()
    (models / "vae" / "partial.safetensors").write_bytes(data[: len(data) - 1000])
    (models / "vae" / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    code, out, _ = inspect("--json", "--models-dir", models)
    reports = {os.path.relpath(r["path"], models): r for r in json.loads(out)}
    assert code == 2
    assert any("not a complete checkpoint" in f for f in reports["checkpoints/qwen.safetensors"]["flags"])
    assert any(f.startswith("truncated") for f in reports["vae/partial.safetensors"]["flags"])
    assert reports["vae/junk.safetensors"]["flags"] == ["unreadable"]
    copies = [reports["checkpoints/sd15.safetensors"]["flags"], reports["checkpoints/sd15-copy.safetensors"]["flags"]]
    assert sum(any("duplicate of" in f for f in flags) for flags in copies) == 1


@pytest.mark.parametrize("fixture", sorted(os.listdir(FIXTURES)))
def test_every_fixture_reads_and_classifies_as_expected(native, tmp_path, fixture):
    from comfy_nodes.cli.inspect_files import inspect_file

    path = write_fixture_file(fixture, tmp_path / "f.safetensors")
    report = inspect_file(path)
    expect = json.load(open(os.path.join(FIXTURES, fixture)))["expect"]
    assert report.error is None
    assert report.anatomy.family == expect["family"]
    assert report.anatomy.complete == expect["complete"]
