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
from safetensors import SafetensorError, safe_open

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


@pytest.fixture(autouse=True)
def private_cache_home(monkeypatch, tmp_path):
    """Hash caches of these tests go under tmp_path, never into the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    monkeypatch.delenv("STAGETRACE_HASH_CACHE", raising=False)
    return tmp_path / "cache-home"


def inspect(*args, preexec_fn=None):
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "inspect", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn)
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
    write_fixture_file("sd15_checkpoint.json", models / "checkpoints" / "sd15.safetensors")
    (models / "loras").mkdir()
    lora = save_model(models / "loras" / "style.safetensors", 1)
    shutil.copy(lora, models / "loras" / "style (1).safetensors")
    vae = write_fixture_file("vae_sd_kl_f8.json", tmp_path / "vae.safetensors")
    data = open(vae, "rb").read()
    (models / "vae" / "partial.safetensors").write_bytes(data[: len(data) - 1000])
    (models / "vae" / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    code, out, _ = inspect("--json", "--models-dir", models)
    reports = {os.path.relpath(r["path"], models): r for r in json.loads(out)}
    assert code == 2
    assert any("not a complete checkpoint" in f for f in reports["checkpoints/qwen.safetensors"]["flags"])
    assert any(f.startswith("truncated") for f in reports["vae/partial.safetensors"]["flags"])
    (flag,) = reports["vae/junk.safetensors"]["flags"]
    assert flag.startswith("unloadable: the safetensors library (and so ComfyUI) refuses this file: header length")
    assert reports["checkpoints/sd15.safetensors"]["flags"] == []
    assert reports["loras/style (1).safetensors"]["flags"] == []  # first by name
    (flag,) = reports["loras/style.safetensors"]["flags"]
    assert flag.startswith(f"duplicate of {models / 'loras' / 'style (1).safetensors'} (identical content")


@pytest.mark.parametrize("fixture", sorted(os.listdir(FIXTURES)))
def test_every_fixture_reads_and_classifies_as_expected(native, tmp_path, fixture):
    from comfy_nodes.cli.inspect_files import inspect_file

    path = write_fixture_file(fixture, tmp_path / "f.safetensors")
    report = inspect_file(path)
    expect = json.load(open(os.path.join(FIXTURES, fixture)))["expect"]
    assert report.error is None
    assert report.anatomy.family == expect["family"]
    assert report.anatomy.complete == expect["complete"]


# --- Models folders: copies by content, links, loops, unreadable entries, what the library refuses ---

def save_model(path, seed: int, metadata=None, shapes=None) -> str:
    """A real safetensors file written by the library: the same tensor names, shapes and dtypes for every seed,
    other weights for each."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    shapes = shapes or {"lora_unet_down.0.weight": (16, 8), "lora_unet_up.0.weight": (8, 16), "alpha": ()}
    save_file({name: rng.standard_normal(shape).astype(np.float16) for name, shape in shapes.items()}, str(path),
              metadata=metadata)
    return str(path)


def walk(models, cache_file=None):
    from comfy_nodes.cli.hashcache import HashCache
    from comfy_nodes.cli.inspect_files import walk_models_dir

    warnings = []
    cache = HashCache(str(cache_file) if cache_file else None, warn=warnings.append)
    reports = walk_models_dir(str(models), cache)
    cache.close()
    return {os.path.relpath(r.path, models): r for r in reports}, cache, warnings


def test_fine_tunes_with_the_same_tensors_are_same_architecture_not_duplicates(native, tmp_path):
    models = tmp_path / "models" / "loras"
    models.mkdir(parents=True)
    a = save_model(models / "a.safetensors", 1)
    save_model(models / "b.safetensors", 2)  # same keys, shapes, dtypes, header bytes and size; other weights
    save_model(models / "c.safetensors", 3, metadata={"trained": "longer"})  # another header too
    shutil.copy(a, models / "d-copy.safetensors")
    assert open(a, "rb").read(200) == open(models / "b.safetensors", "rb").read(200)  # headers alike
    reports, cache, _ = walk(tmp_path / "models", tmp_path / "h.sqlite3")
    assert reports["loras/a.safetensors"].flags == []
    for name in ("b", "c"):
        report = reports[f"loras/{name}.safetensors"]
        (note,) = report.notes  # a note, not a problem: fine-tunes of one base are no fault of the folder
        assert note.startswith(f"same architecture as {a} (same tensors, shapes and dtypes") and "not a copy" in note
        assert report.flags == []
    (flag,) = reports["loras/d-copy.safetensors"].flags
    assert flag.startswith(f"duplicate of {a} (identical content")
    # a, b and the copy share size and header; b's sampled bytes differ and c's header does: only a and its
    # copy are hashed whole
    assert cache.computed == 2 and reports["loras/a.safetensors"].content_hash is not None
    code, out, _ = inspect("--models-dir", tmp_path / "models")
    assert code == 1 and "same architecture as" in out and out.count("duplicate of") == 1
    os.unlink(models / "d-copy.safetensors")
    code, out, _ = inspect("--models-dir", tmp_path / "models")
    assert out.count("same architecture as") == 2 and "  ! " not in out  # fine-tunes alone: nothing flagged


def test_the_second_walk_hashes_nothing_and_a_changed_file_is_hashed_again(native, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for i in range(2):
        save_model(models / f"m{i}.safetensors", i)
        shutil.copy(models / f"m{i}.safetensors", models / f"m{i}-copy.safetensors")
    cache_file = tmp_path / "cache" / "h.sqlite3"
    first, cache, warnings = walk(models, cache_file)
    assert (cache.computed, cache.hits, warnings) == (4, 0, [])
    assert (cache.samples_read, cache.sample_hits) == (4, 0)
    second, cache, _ = walk(models, cache_file)
    assert (cache.computed, cache.hits, cache.samples_read, cache.sample_hits, cache.bytes_read) == (0, 4, 0, 4, 0)
    assert [(r.flags, r.notes) for r in second.values()] == [(r.flags, r.notes) for r in first.values()]
    save_model(models / "m1-copy.safetensors", 0)  # rewritten: now a copy of m0, with a new mtime
    third, cache, _ = walk(models, cache_file)
    assert (cache.computed, cache.hits) == (1, 2)  # m1 has no copy left: its samples differ, it is not hashed
    assert third["m1-copy.safetensors"].flags[0].startswith(f"duplicate of {models / 'm0-copy.safetensors'}")
    assert third["m1.safetensors"].notes[0].startswith("same architecture")


@pytest.mark.parametrize("damage", ["garbage", "truncated-database", "other-schema"])
def test_a_corrupt_cache_gives_one_warning_and_is_rebuilt(native, tmp_path, damage):
    import sqlite3

    models = tmp_path / "models"
    models.mkdir()
    save_model(models / "a.safetensors", 1)
    shutil.copy(models / "a.safetensors", models / "a-copy.safetensors")
    save_model(models / "b.safetensors", 2)
    cache_file = tmp_path / "h.sqlite3"
    walk(models, cache_file)
    if damage == "garbage":
        cache_file.write_bytes(b"this is not an sqlite database " * 40)
    elif damage == "truncated-database":
        cache_file.write_bytes(cache_file.read_bytes()[:3000])
    else:
        cache_file.unlink()
        sqlite3.connect(cache_file).execute("CREATE TABLE hashes (x)").connection.commit()
    reports, cache, warnings = walk(models, cache_file)
    (warning,) = warnings
    assert warning.startswith(f"hash cache {cache_file} is unreadable") and "starting a new one" in warning
    assert cache.computed == 2 and reports["b.safetensors"].notes[0].startswith("same architecture")
    assert reports["a.safetensors"].flags[0].startswith("duplicate of")
    _, cache, warnings = walk(models, cache_file)  # rebuilt: whole and used
    assert (cache.hits, warnings) == (2, [])


def test_the_cache_setting_moves_it_or_turns_it_off(native, tmp_path, private_cache_home, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    save_model(models / "a.safetensors", 1)
    shutil.copy(models / "a.safetensors", models / "b.safetensors")
    assert inspect("--models-dir", models)[0] == 1
    assert (private_cache_home / "stagetrace" / "hashes.sqlite3").is_file()  # the default place
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    monkeypatch.setenv("STAGETRACE_HASH_CACHE", str(moved))  # a folder: the file goes in it
    assert inspect("--models-dir", models)[0] == 1 and (moved / "hashes.sqlite3").is_file()
    shutil.rmtree(private_cache_home)
    monkeypatch.setenv("STAGETRACE_HASH_CACHE", "off")
    code, out, err = inspect("--models-dir", models)
    assert code == 1 and "duplicate of" in out and err == "" and not private_cache_home.exists()


def test_an_unwritable_cache_place_gives_one_warning_and_the_walk_goes_on(native, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    save_model(models / "a.safetensors", 1)
    shutil.copy(models / "a.safetensors", models / "b.safetensors")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("STAGETRACE_HASH_CACHE", str(blocker / "sub" / "h.sqlite3"))  # under a file: cannot be made
    code, out, err = inspect("--models-dir", models)
    assert code == 1 and "duplicate of" in out
    (line,) = err.splitlines()
    assert line.startswith(f"stagetrace inspect: hash cache {blocker}") and "hashing without a cache" in line


def test_symlinked_folders_are_followed_and_a_loop_is_reported_once(native, tmp_path):
    elsewhere = tmp_path / "disk2" / "loras"
    elsewhere.mkdir(parents=True)
    save_model(elsewhere / "style.safetensors", 1)
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    os.symlink(elsewhere, models / "loras")  # a symlinked subfolder: walked, as ComfyUI lists it
    os.symlink(models, models / "checkpoints" / "back-up")  # a loop back to the top
    os.symlink(elsewhere, models / "checkpoints" / "loras-again")  # a second way into a folder already walked
    reports, _, _ = walk(models)
    assert reports["loras/style.safetensors"].anatomy is not None
    loops = [path for path, r in reports.items() if any(f.startswith("link loop") for f in r.flags)]
    assert loops == ["checkpoints/back-up"]
    assert reports["checkpoints/back-up"].kind == "folder"
    assert reports["checkpoints/loras-again"].notes[0].startswith(f"the same folder as {models / 'loras'}")
    assert reports["checkpoints/loras-again"].flags == []
    assert sum(1 for r in reports.values() if r.kind == "file") == 1  # its file once, not once per way in
    code, out, _ = inspect("--models-dir", models)
    assert code == 1 and out.count("link loop") == 1


def test_a_file_linked_twice_is_the_same_file_not_a_copy(native, tmp_path):
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    (models / "checkpoints").mkdir()
    real = save_model(models / "loras" / "a.safetensors", 1)
    os.symlink(real, models / "loras" / "b-link.safetensors")
    os.link(real, models / "checkpoints" / "c-hard.safetensors")
    os.symlink(tmp_path / "gone.safetensors", models / "loras" / "dangling.safetensors")
    reports, cache, _ = walk(models, tmp_path / "h.sqlite3")
    first = models / "checkpoints" / "c-hard.safetensors"  # walked first: checkpoints/ comes before loras/
    assert reports["checkpoints/c-hard.safetensors"].notes == []
    for name in ("loras/a.safetensors", "loras/b-link.safetensors"):
        (note,) = reports[name].notes
        assert note.startswith(f"the same file as {first}, linked twice (a symlink or hard link)"), note
        assert reports[name].flags == []
    assert reports["loras/b-link.safetensors"].link == real
    gone = tmp_path / "gone.safetensors"
    assert reports["loras/dangling.safetensors"].flags == [f"broken link: {gone} does not exist"]
    assert cache.computed == 0  # one file on disk: nothing to hash


def drop_root_file_powers():
    """Run the child without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (dropped from the bounding set before
    exec), so that even root meets file modes: the only way a root test run sees an unreadable file."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unprivileged():
    """A preexec_fn under which mode 000 is unreadable (None when not root), or skip this test with the reason."""
    if os.geteuid() != 0:
        return None
    try:  # a preexec_fn that raises makes subprocess raise SubprocessError here
        subprocess.run([sys.executable, "-c", "pass"], preexec_fn=drop_root_file_powers, check=True, timeout=60)
    except (subprocess.SubprocessError, OSError):
        pytest.skip("running as root and the capability bounding set cannot be lowered here: a mode-000 file "
                    "is readable to root, so unreadable entries cannot be made")
    return drop_root_file_powers


def test_unreadable_files_and_folders_are_flagged(native, tmp_path):
    preexec = unprivileged()
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    (models / "vae").mkdir()
    save_model(models / "loras" / "fine.safetensors", 1)
    locked = save_model(models / "loras" / "locked.safetensors", 2)
    save_model(models / "vae" / "hidden.safetensors", 3)
    os.chmod(locked, 0)
    os.chmod(models / "vae", 0)
    os.chmod(tmp_path, 0o755)  # the child may have lost root's powers: let it reach the models
    try:
        code, out, err = inspect("--json", "--models-dir", models, preexec_fn=preexec)
    finally:
        os.chmod(models / "vae", 0o755)
        os.chmod(locked, 0o644)
    reports = {os.path.relpath(r["path"], models): r for r in json.loads(out)}
    assert code == 2, err
    assert reports["loras/fine.safetensors"]["flags"] == []
    assert reports["loras/locked.safetensors"]["flags"] == ["unreadable: Permission denied"]
    (flag,) = reports["vae"]["flags"]
    assert reports["vae"]["kind"] == "folder" and flag.startswith("unreadable folder: Permission denied")


def test_a_missing_or_unusable_models_folder_is_an_error(native, tmp_path):
    for path, words in ((tmp_path / "nope", "no such folder"), (tmp_path / "f.safetensors", "not a folder")):
        if "f." in path.name:
            save_model(path, 1)
        code, out, err = inspect("--models-dir", path)
        assert code == 2 and out == "" and err.strip() == f"stagetrace inspect: --models-dir {path}: {words}"


def test_files_the_library_refuses_are_flagged_unloadable(native, tmp_path):
    models = tmp_path / "models" / "loras"
    models.mkdir(parents=True)
    good = save_model(models / "good.safetensors", 1)
    raw = open(good, "rb").read()
    (models / "trailing.safetensors").write_bytes(raw + b"\0" * 16)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")[-1][1]
    header[name]["data_offsets"] = [o + 4 for o in header[name]["data_offsets"]]  # a 4-byte gap before it
    body = json.dumps(header).encode()
    (models / "gap.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:] + bytes(4))
    reports, _, _ = walk(tmp_path / "models")
    for bad, words in (("trailing", "trailing bytes after the last tensor"), ("gap", "gap in the data section")):
        path = str(models / f"{bad}.safetensors")
        with pytest.raises(SafetensorError):  # the real library refuses it, so ComfyUI cannot load it
            safe_open(path, framework="numpy")
        (flag,) = reports[f"loras/{bad}.safetensors"].flags
        assert flag.startswith("unloadable: the safetensors library (and so ComfyUI) refuses this file")
        assert words in flag
    assert reports["loras/good.safetensors"].flags == []


def test_a_dtype_pytorch_cannot_hold_is_flagged_exactly_where_safetensors_torch_side_refuses_it(native, tmp_path):
    """Every dtype the format names, in a well-formed file: the flag 'unloadable in ComfyUI' stands where the
    real library's PyTorch side (what ComfyUI loads through) cannot give the tensor, and only there."""
    pytest.importorskip("torch")
    from comfy_nodes.analysis.anatomy import DTYPES

    paths = {}
    for dtype, (_, bits) in DTYPES.items():
        count = 8  # 8 elements: whole bytes for every width (4, 6, 8... bits)
        size = count * bits // 8
        body = json.dumps({"t": {"dtype": dtype, "shape": [count], "data_offsets": [0, size]}}).encode()
        body += b" " * (-len(body) % 8)
        path = tmp_path / f"{dtype}.safetensors"
        path.write_bytes(struct.pack("<Q", len(body)) + body + bytes(size))
        paths[dtype] = path
    code, out, err = inspect(*paths.values())
    assert not err
    blocks = {block.split("  (", 1)[0]: block for block in out.strip().split("\n\n")}
    for dtype, path in paths.items():
        try:
            with safe_open(str(path), framework="pt") as f:
                f.get_tensor("t")
            loads = True
        except SafetensorError as exc:
            assert "Dtype not understood" in str(exc)
            loads = False
        assert ("unloadable in ComfyUI" in blocks[str(path)]) == (not loads), (dtype, blocks[str(path)])
    assert any("unloadable in ComfyUI" in b for b in blocks.values())  # this torch has no 6-bit float
