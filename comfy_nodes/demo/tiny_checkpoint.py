"""Generate a tiny, deterministic SD1.5-shaped checkpoint for tests and demos, and the user's case in
miniature: a diffusion-model-only Qwen-Image file, written without torch.

Variants for the diagnosis scenarios (tests/comfy_scenarios.py): the UNet alone (unprefixed, as a
diffusion-model-only file), the checkpoint without its VAE, a CLIP-L of zeros, and what an aborted
download of any file leaves (``write_partial_download``).

The file is accepted by ComfyUI's ``CheckpointLoaderSimple``:

* ``model.diffusion_model.*`` is a one-level UNet (model_channels 320, one
  ResBlock, one SpatialTransformer of depth 1 with context_dim 768, a
  ResBlock-only middle block, two output ResBlocks). ComfyUI's model detection
  classifies it as SD15 (``context_dim == 768``, ``model_channels == 320``,
  conv ``proj_in``, no ``label_emb``, ``in_channels == 4``).
* ``first_stage_model.*`` holds a TAESD autoencoder (decoder, encoder and the
  ``vae_scale`` / ``vae_shift`` scalars), which ComfyUI's ``VAE`` recognises by
  ``taesd_decoder.1.weight``.
* There are no text-encoder keys: the loader returns ``CLIP = None`` and logs
  that no text encoder was found. Feed the sampler with a conditioning node that
  needs no CLIP instead (the harness provides ``HarnessZeroConditioning``).

Every multi-dimensional weight is drawn from N(0, 0.02) with a seeded
generator, biases are 0 and normalisation weights are 1, so the same seed
gives byte-identical files and identical sampling results.

torch and safetensors are imported lazily so that importing this module is cheap; the Qwen-Image
miniature needs neither.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

_CHANNELS = 320  # SD15 model_channels; detection requires exactly this.
_TIME_EMBED = 4 * _CHANNELS
_CONTEXT_DIM = 768  # SD15 cross-attention width (CLIP-L hidden size).
_LATENT_CHANNELS = 4
_TAESD_CHANNELS = 64
_INIT_STD = 0.02

Shapes = dict[str, tuple[int, ...]]


def _resblock(prefix: str, c_in: int, c_out: int) -> Shapes:
    """Keys of ``openaimodel.ResBlock`` (GroupNorm/conv in, time-embedding projection, GroupNorm/conv out)."""
    shapes: Shapes = {
        "in_layers.0.weight": (c_in,),
        "in_layers.0.bias": (c_in,),
        "in_layers.2.weight": (c_out, c_in, 3, 3),
        "in_layers.2.bias": (c_out,),
        "emb_layers.1.weight": (c_out, _TIME_EMBED),
        "emb_layers.1.bias": (c_out,),
        "out_layers.0.weight": (c_out,),
        "out_layers.0.bias": (c_out,),
        "out_layers.3.weight": (c_out, c_out, 3, 3),
        "out_layers.3.bias": (c_out,),
    }
    if c_in != c_out:
        shapes["skip_connection.weight"] = (c_out, c_in, 1, 1)
        shapes["skip_connection.bias"] = (c_out,)
    return {prefix + k: v for k, v in shapes.items()}


def _spatial_transformer(prefix: str, ch: int) -> Shapes:
    """Keys of a conv-projected ``SpatialTransformer`` holding one ``BasicTransformerBlock``."""
    ff_inner = 4 * ch
    block = "transformer_blocks.0."
    shapes: Shapes = {
        "norm.weight": (ch,),
        "norm.bias": (ch,),
        # 4-D (1x1 conv) projections: detection reads this as use_linear_in_transformer=False.
        "proj_in.weight": (ch, ch, 1, 1),
        "proj_in.bias": (ch,),
        "proj_out.weight": (ch, ch, 1, 1),
        "proj_out.bias": (ch,),
        block + "attn1.to_q.weight": (ch, ch),
        block + "attn1.to_k.weight": (ch, ch),
        block + "attn1.to_v.weight": (ch, ch),
        block + "attn1.to_out.0.weight": (ch, ch),
        block + "attn1.to_out.0.bias": (ch,),
        block + "ff.net.0.proj.weight": (2 * ff_inner, ch),  # GEGLU doubles the width.
        block + "ff.net.0.proj.bias": (2 * ff_inner,),
        block + "ff.net.2.weight": (ch, ff_inner),
        block + "ff.net.2.bias": (ch,),
        block + "attn2.to_q.weight": (ch, ch),
        block + "attn2.to_k.weight": (ch, _CONTEXT_DIM),
        block + "attn2.to_v.weight": (ch, _CONTEXT_DIM),
        block + "attn2.to_out.0.weight": (ch, ch),
        block + "attn2.to_out.0.bias": (ch,),
    }
    for norm in ("norm1", "norm2", "norm3"):
        shapes[f"{block}{norm}.weight"] = (ch,)
        shapes[f"{block}{norm}.bias"] = (ch,)
    return {prefix + k: v for k, v in shapes.items()}


def tiny_unet_shapes() -> Shapes:
    """Shapes of the tiny SD1.5 UNet, keyed with the ``model.diffusion_model.`` prefix."""
    ch = _CHANNELS
    shapes: Shapes = {
        "time_embed.0.weight": (_TIME_EMBED, ch),
        "time_embed.0.bias": (_TIME_EMBED,),
        "time_embed.2.weight": (_TIME_EMBED, _TIME_EMBED),
        "time_embed.2.bias": (_TIME_EMBED,),
        "input_blocks.0.0.weight": (ch, _LATENT_CHANNELS, 3, 3),
        "input_blocks.0.0.bias": (ch,),
    }
    shapes.update(_resblock("input_blocks.1.0.", ch, ch))
    shapes.update(_spatial_transformer("input_blocks.1.1.", ch))
    # Middle block with a ResBlock only: detected as transformer_depth_middle == -1.
    shapes.update(_resblock("middle_block.0.", ch, ch))
    # Each output block concatenates one skip connection (320 + 320 channels).
    shapes.update(_resblock("output_blocks.0.0.", 2 * ch, ch))
    shapes.update(_resblock("output_blocks.1.0.", 2 * ch, ch))
    shapes.update({
        "out.0.weight": (ch,),
        "out.0.bias": (ch,),
        "out.2.weight": (_LATENT_CHANNELS, ch, 3, 3),
        "out.2.bias": (_LATENT_CHANNELS,),
    })
    return {UNET_PREFIX + k: v for k, v in shapes.items()}


def _taesd_conv(prefix: str, c_in: int, c_out: int, bias: bool = True) -> Shapes:
    shapes: Shapes = {prefix + "weight": (c_out, c_in, 3, 3)}
    if bias:
        shapes[prefix + "bias"] = (c_out,)
    return shapes


def _taesd_block(prefix: str) -> Shapes:
    """A TAESD ``Block`` with equal in/out width (identity skip, so no skip keys)."""
    shapes: Shapes = {}
    for i in (0, 2, 4):
        shapes.update(_taesd_conv(f"{prefix}conv.{i}.", _TAESD_CHANNELS, _TAESD_CHANNELS))
    return shapes


def tiny_vae_shapes() -> Shapes:
    """Shapes of a TAESD autoencoder, keyed with the ``first_stage_model.`` prefix.

    Indices follow the ``nn.Sequential`` layouts of ``comfy.taesd.taesd.Decoder``
    and ``Encoder``; activations, clamps and upsampling layers have no weights.
    """
    c = _TAESD_CHANNELS
    dec = "taesd_decoder."
    shapes: Shapes = _taesd_conv(f"{dec}1.", _LATENT_CHANNELS, c)
    for i in (3, 4, 5, 8, 9, 10, 13, 14, 15, 18):
        shapes.update(_taesd_block(f"{dec}{i}."))
    for i in (7, 12, 17):  # convs after each 2x upsample
        shapes.update(_taesd_conv(f"{dec}{i}.", c, c, bias=False))
    shapes.update(_taesd_conv(f"{dec}19.", c, 3))

    enc = "taesd_encoder."
    shapes.update(_taesd_conv(f"{enc}0.", 3, c))
    for i in (1, 3, 4, 5, 7, 8, 9, 11, 12, 13):
        shapes.update(_taesd_block(f"{enc}{i}."))
    for i in (2, 6, 10):  # stride-2 downsampling convs
        shapes.update(_taesd_conv(f"{enc}{i}.", c, c, bias=False))
    shapes.update(_taesd_conv(f"{enc}14.", c, _LATENT_CHANNELS))

    shapes["vae_scale"] = ()
    shapes["vae_shift"] = ()
    return {VAE_PREFIX + k: v for k, v in shapes.items()}


def _init_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Deterministic initial value for one parameter (see module docstring)."""
    import torch

    if key.endswith("vae_scale"):
        return torch.tensor(1.0)
    if key.endswith("vae_shift") or key.endswith(".bias"):
        return torch.zeros(shape)
    if len(shape) == 1:  # GroupNorm / LayerNorm weight
        return torch.ones(shape)
    return torch.randn(shape, generator=generator) * _INIT_STD


def tiny_sd15_state_dict(*, seed: int = 0, with_vae: bool = True,
                         dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Build the checkpoint's state dict in memory (``dtype`` defaults to float16).

    Values are drawn in float32 in a fixed key order and then cast, so a given
    ``seed`` always yields the same tensors.
    """
    import torch

    dtype = torch.float16 if dtype is None else dtype
    shapes = tiny_unet_shapes()
    if with_vae:
        shapes.update(tiny_vae_shapes())
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return {key: _init_tensor(key, shape, generator).to(dtype).contiguous()
            for key, shape in shapes.items()}


def write_tiny_sd15_checkpoint(path: str | os.PathLike, *, seed: int = 0, with_vae: bool = True,
                               dtype: torch.dtype | None = None) -> str:
    """Write the tiny SD1.5 checkpoint as safetensors to ``path`` and return ``path`` as str.

    ``with_vae=False`` leaves out the ``first_stage_model.*`` keys (the loader then
    logs "No VAE weights detected" and ``VAEDecode`` fails). ``dtype`` defaults to
    ``torch.float16`` (about 32 MB); ComfyUI upcasts to float32 on CPU.
    Parent directories are created as needed.
    """
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state_dict = tiny_sd15_state_dict(seed=seed, with_vae=with_vae, dtype=dtype)
    save_file(state_dict, path, metadata={"format": "pt", "generator": "stagetrace.tiny_sd15", "seed": str(seed)})
    return path


def write_tiny_diffusion_model_only(path: str | os.PathLike, *, seed: int = 0) -> str:
    """The same UNet as a diffusion-model-only file: unprefixed keys, no VAE and
    no text encoder, like Qwen-Image's ``diffusion_pytorch_model.safetensors``.
    CheckpointLoaderSimple loads it as a diffusion model and returns no CLIP and
    no VAE; UNETLoader is the intended loader."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state_dict = tiny_sd15_state_dict(seed=seed, with_vae=False)
    save_file({key[len(UNET_PREFIX):]: value for key, value in state_dict.items()}, path,
              metadata={"format": "pt", "generator": "stagetrace.tiny_sd15_unet", "seed": str(seed)})
    return path


def write_tiny_sd15_without_vae(path: str | os.PathLike, *, seed: int = 0) -> str:
    """The tiny checkpoint without its VAE (the ``first_stage_model.*`` keys left out), as some pruned
    checkpoints ship: CheckpointLoaderSimple loads its UNet and returns ``VAE = None``, so a VAEDecode
    fed from the loader fails and a VAELoader is what the workflow lacks."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tiny_sd15_state_dict(seed=seed, with_vae=False), path,
              metadata={"format": "pt", "generator": "stagetrace.tiny_sd15_no_vae", "seed": str(seed)})
    return path


def write_partial_download(source: str | os.PathLike, path: str | os.PathLike, fraction: float) -> str:
    """What an aborted download of ``source`` leaves at ``path``: its first ``fraction`` of bytes (the
    header intact, the tensor data cut short). Returns the path as str."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    keep = int(os.path.getsize(source) * fraction)
    with open(source, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(keep))
    return path


def clip_l_shapes() -> Shapes:
    """CLIP-L's text model (ViT-L/14), as clip_l.safetensors holds it: ComfyUI builds this encoder
    from a fixed config (768 wide, 12 layers), so a CLIP-L file cannot be tiny."""
    shapes: Shapes = {
        "text_model.embeddings.token_embedding.weight": (49408, 768),
        "text_model.embeddings.position_embedding.weight": (77, 768),
        "text_model.final_layer_norm.weight": (768,),
        "text_model.final_layer_norm.bias": (768,),
    }
    for i in range(12):
        layer = f"text_model.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[layer + norm + ".weight"] = (768,)
            shapes[layer + norm + ".bias"] = (768,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[layer + f"self_attn.{proj}.weight"] = (768, 768)
            shapes[layer + f"self_attn.{proj}.bias"] = (768,)
        shapes[layer + "mlp.fc1.weight"] = (3072, 768)
        shapes[layer + "mlp.fc1.bias"] = (3072,)
        shapes[layer + "mlp.fc2.weight"] = (768, 3072)
        shapes[layer + "mlp.fc2.bias"] = (768,)
    return shapes


def write_clip_l_zeros(path: str | os.PathLike) -> str:
    """A CLIP-L text encoder with every weight zero (246 MB of fp16): it loads and encodes like the
    real one (to all-zero conditioning: no NaN, layer norms of zeros are zeros), so a workflow on the
    CPU exercises CLIPLoader and CLIPTextEncode for real."""
    import torch
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in clip_l_shapes().items()}, path,
              metadata={"format": "pt", "generator": "stagetrace.clip_l_zeros"})
    return path


# --- The user's case in miniature (no torch needed) ------------------------------------------------

# Bytes per element of the safetensors dtypes the miniature uses.
_DTYPE_BYTES = {"F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4}
QWEN_IMAGE_MINI = "qwen_image_mini_fp8_e4m3fn.safetensors"


def tiny_qwen_image_shapes(hidden: int = 64, blocks: int = 2) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A Qwen-Image MMDiT as Comfy-Org's qwen_image_fp8_e4m3fn.safetensors lays it out (unprefixed keys,
    weights in fp8_e4m3fn, biases and norms in bf16), shrunk from 3072 wide and 60 blocks to ``hidden``
    and ``blocks``; the 64 latent channels in and the 3584-wide text side (Qwen2.5-VL 7B) are the real
    ones. Returns name -> (safetensors dtype, shape)."""
    head = 128 if hidden >= 128 else hidden
    fp8, bf16 = "F8_E4M3", "BF16"
    shapes = {
        "img_in.weight": (fp8, (hidden, 64)), "img_in.bias": (bf16, (hidden,)),
        "txt_in.weight": (fp8, (hidden, 3584)), "txt_in.bias": (bf16, (hidden,)),
        "txt_norm.weight": (bf16, (3584,)),
        "time_text_embed.timestep_embedder.linear_1.weight": (fp8, (hidden, 256)),
        "time_text_embed.timestep_embedder.linear_2.weight": (fp8, (hidden, hidden)),
        "norm_out.linear.weight": (fp8, (2 * hidden, hidden)), "norm_out.linear.bias": (bf16, (2 * hidden,)),
        "proj_out.weight": (fp8, (64, hidden)), "proj_out.bias": (bf16, (64,)),
    }
    for i in range(blocks):
        block = f"transformer_blocks.{i}."
        for mod in ("img_mod", "txt_mod"):
            shapes[f"{block}{mod}.1.weight"] = (fp8, (6 * hidden, hidden))
            shapes[f"{block}{mod}.1.bias"] = (bf16, (6 * hidden,))
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            shapes[f"{block}attn.{proj}.weight"] = (fp8, (hidden, hidden))
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            shapes[f"{block}attn.{norm}.weight"] = (bf16, (head,))
        for mlp in ("img_mlp", "txt_mlp"):
            shapes[f"{block}{mlp}.net.0.proj.weight"] = (fp8, (4 * hidden, hidden))
            shapes[f"{block}{mlp}.net.2.weight"] = (fp8, (hidden, 4 * hidden))
    return shapes


def write_zero_safetensors(path: str | os.PathLike, tensors: dict[str, tuple[str, tuple[int, ...]]],
                           metadata: dict[str, str] | None = None) -> str:
    """Write a safetensors file of all-zero tensors (name -> (dtype, shape)) with the standard library
    alone: the 8-byte header length, the JSON header padded to 8 bytes, the data. Returns the path."""
    import json
    import math
    import struct

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * _DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body)
        f.write(bytes(offset))
    return path


def write_tiny_qwen_image_diffusion_only(path: str | os.PathLike) -> str:
    """The user's file in miniature: a diffusion-model-only Qwen-Image in fp8 (about 1 MB, all zeros),
    which CheckpointLoaderSimple cannot give a CLIP or a VAE."""
    return write_zero_safetensors(path, tiny_qwen_image_shapes(),
                                  {"format": "pt", "generator": "stagetrace.tiny_qwen_image"})
