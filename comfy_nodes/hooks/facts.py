"""Facts about the machine and ComfyUI that the stage spans carry: storage bytes read, RAM and swap,
the filesystem under a model file, what ComfyUI holds on the device, tokens, bytes saved. Each returns
None (or an empty answer) where the kernel or ComfyUI does not say; none of them raises for that."""

from __future__ import annotations

import os
import re
import sys


def storage_read_bytes() -> int | None:
    """Bytes this process has read from storage so far (/proc/self/io read_bytes; page cache hits
    are not counted), or None where the kernel does not say."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def file_mappings(path: str) -> list[tuple[int, int]]:
    """The address ranges where this process maps path (/proc/self/maps), [] when none or unknown."""
    try:
        target = os.path.realpath(path)
        ranges = []
        with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target:
                    start, _, end = fields[0].partition("-")
                    ranges.append((int(start, 16), int(end, 16)))
        return ranges
    except (OSError, ValueError):
        return []


def maps_file(state_dict, path: str, sample: int = 8) -> bool:
    """Whether the tensors a loader returned (a state dict, or (state dict, metadata)) are views of a
    mapping of path, so their bytes are read when first touched rather than now: a few are checked."""
    sd = state_dict[0] if isinstance(state_dict, tuple) and state_dict else state_dict
    if not isinstance(sd, dict) or not sd:
        return False
    ranges = file_mappings(path)
    if not ranges:
        return False
    for i, tensor in enumerate(sd.values()):
        if i >= sample:
            break
        try:
            address = int(tensor.data_ptr())
        except Exception:  # noqa: BLE001 - not a tensor
            continue
        if any(start <= address < end for start, end in ranges):
            return True
    return False


def memory_facts() -> dict | None:
    """System RAM and swap now (/proc/meminfo): available, total, swap used; None where unknown."""
    try:
        values = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
                    values[key] = int(rest.split()[0]) * 1024
        return {"available": values["MemAvailable"], "total": values["MemTotal"],
                "swap_used": values.get("SwapTotal", 0) - values.get("SwapFree", 0)}
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _unescape_mount(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_of(path: str) -> tuple[str | None, str | None]:
    """(filesystem type, mount point) holding path, from /proc/self/mountinfo: overlay, 9p, fuse.*,
    nfs... say why a read is slow. Mount points need not be UTF-8: the file is read as bytes decoded
    with surrogateescape, like every path Python gets from the kernel. (None, None) when unknown."""
    try:
        target = os.path.realpath(path)
        best = ("", None)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5:
                    continue
                mount_point = _unescape_mount(fields[4])
                fs_type = right.split()[0] if right.split() else None
                if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and \
                        len(mount_point) >= len(best[0]):
                    best = (mount_point, fs_type)
        return best[1], best[0] or None
    except (OSError, ValueError):
        return None, None


def loaded_models() -> list[dict]:
    """What comfy.model_management holds after a load: per model, bytes loaded on the device vs its
    total size, partial (lowvram) or full, device, weight dtype and the dtype it is cast to per layer."""
    mm = sys.modules.get("comfy.model_management")
    out = []
    for lm in list(getattr(mm, "current_loaded_models", None) or ()):
        try:
            patcher = lm.model
            if patcher is None:
                continue
            model = getattr(patcher, "model", None)
            total, loaded = int(lm.model_memory()), int(lm.model_loaded_memory())
            out.append({
                "model": type(model).__name__ if model is not None else "?",
                "device": str(getattr(lm, "device", "?")),
                "loaded_bytes": loaded,
                "total_bytes": total,
                "partial": bool(getattr(model, "model_lowvram", False)) or loaded < total,
                "dtype": str(patcher.model_dtype()) if hasattr(patcher, "model_dtype") else None,
                # weights stored in one dtype and computed in another are cast on every forward
                "manual_cast": str(getattr(model, "manual_cast_dtype", None) or "") or None,
            })
        except Exception:  # noqa: BLE001 - a model half torn down: skip it
            continue
    return out


def token_count(tokens) -> int | None:
    """Tokens a text encoder got: CLIP tokenizers give {name: [[(token, weight), ...], ...]}."""
    try:
        if isinstance(tokens, dict):
            return sum(len(batch) for value in tokens.values() for batch in value)
        return sum(len(batch) for batch in tokens)
    except TypeError:
        return None




def saved_bytes(node, result) -> int | None:
    """Bytes of the images SaveImage.save_images wrote, from its result's file list."""
    try:
        folder = node.output_dir
        total = 0
        for image in result["ui"]["images"]:
            total += os.path.getsize(os.path.join(folder, image.get("subfolder", ""), image["filename"]))
        return total
    except Exception:  # noqa: BLE001
        return None
