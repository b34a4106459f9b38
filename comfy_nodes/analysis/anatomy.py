"""Checkpoint anatomy: what a ``.safetensors`` file holds, read from its header alone.

``classify(tensors, metadata)`` takes the tensor table the C header reader returns
(name -> dtype string and shape) and returns an :class:`Anatomy`: the components the
file holds (diffusion model, text encoders, VAE, LoRA, ControlNet, other), each with
its family or type, key prefix, tensor and parameter counts, bytes and a dtype
histogram; whether the file can run text-to-image on its own; what it still needs;
and which ComfyUI loader nodes to use.

Everything that knows about model families is data, in three tables:

* ``PREFIXES``: how all-in-one checkpoints nest their parts (``model.diffusion_model.``,
  ``first_stage_model.``, ``text_encoders.t5xxl.``, ...). Keys under no known prefix
  form one more group, which is how standalone files are read.
* ``RULES``: one record per recognisable layout: the component kind, its name, the
  keys that must (and must not) be present, shape predicates where keys alone are
  ambiguous, and a priority. Each group gets the highest-priority rule that matches.
* ``FAMILY_NEEDS``: per diffusion-model family, the text encoders and VAE that
  text-to-image needs besides the model, the files ComfyUI's examples use for them,
  and the loader nodes that take them.

The layouts were read from ComfyUI 0.3.64 (``comfy/model_detection.py``,
``comfy/sd.py``: ``VAE.__init__`` and ``detect_te_model``, ``comfy/supported_models.py``,
the model definitions under ``comfy/ldm``); the tables are written from scratch.

Pure Python: no I/O, no torch. Importing the module only builds the tables.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

from ..core.units import format_bytes

UNKNOWN = "unknown"
KINDS = ("diffusion_model", "text_encoder", "vae", "lora", "controlnet", "other")
_KIND_ORDER = {kind: i for i, kind in enumerate(KINDS)}

# --- Dtypes ---

# safetensors dtype -> (name in the histogram, bits per element).
DTYPES: dict[str, tuple[str, int]] = {
    "F32": ("fp32", 32),
    "F16": ("fp16", 16),
    "BF16": ("bf16", 16),
    "F8_E4M3": ("fp8_e4m3fn", 8),
    "F8_E5M2": ("fp8_e5m2", 8),
    "I64": ("int", 64),
    "I32": ("int", 32),
    "I16": ("int", 16),
    "I8": ("int", 8),
    "U64": ("int", 64),
    "U32": ("int", 32),
    "U16": ("int", 16),
    "U8": ("int", 8),
    "BOOL": ("other", 8),
    "F64": ("other", 64),
    "F8_E8M0": ("other", 8),
    "F8_E4M3FNUZ": ("other", 8),
    "F8_E5M2FNUZ": ("other", 8),
    "C64": ("other", 64),
    "F6_E2M3": ("other", 6),
    "F6_E3M2": ("other", 6),
    "F4": ("other", 4),
}
DTYPE_ORDER = ("fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "int", "other")


_OTHER = ("other", 0)


def dtype_name(dtype: str) -> str:
    """The histogram name of a safetensors dtype string ("F8_E4M3" -> "fp8_e4m3fn"); "other" if unknown."""
    return DTYPES.get(dtype, _OTHER)[0]


# --- Key patterns ---
#
# A pattern is a tensor name relative to a component's root, where "#" stands for one
# integer segment (a block index) and "*" for any run of characters. Where a pattern
# matches several keys, shape predicates and facts read the one with the smallest
# indices (ComfyUI's detection also reads the first block that has the layer).


@cache
def _compile(pattern: str) -> tuple[str, re.Pattern[str]]:
    """(literal head, regex) for a pattern; the head lets a scan skip most keys cheaply."""
    pieces = re.split(r"([#*])", pattern)
    regex = "".join("([0-9]+)" if p == "#" else ".+?" if p == "*" else re.escape(p) for p in pieces)
    return pieces[0], re.compile(regex, re.DOTALL)  # as csrc/st_sfgroup.c matches prefixes


@cache
def _tail(pattern: str) -> str:
    """The literal text after a pattern's last wildcard: with the head, it rules out most keys
    before the regex runs."""
    return re.split(r"[#*]", pattern)[-1]


def _is_literal(pattern: str) -> bool:
    return "#" not in pattern and "*" not in pattern


@dataclass(frozen=True)
class Shape:
    """Shape predicate: the first key matching ``key`` has ``shape[axis]`` (or its rank) in ``values``."""

    key: str
    axis: int | str  # an index into the shape, or "rank"
    values: tuple[int, ...]


def dim(key: str, axis: int, *values: int) -> Shape:
    return Shape(key, axis, values)


def rank(key: str, *values: int) -> Shape:
    return Shape(key, "rank", values)


@dataclass(frozen=True)
class Fact:
    """A detail reported with a component: a dimension, a presence flag or a block count."""

    name: str
    key: str
    axis: int | str  # an index into the shape, "present" or "count" (1 + the highest first "#" index)


def fact(name: str, key: str, axis: int | str) -> Fact:
    return Fact(name, key, axis)


# --- Rules ---


@dataclass(frozen=True)
class Rule:
    """One recognisable component layout. All ``keys`` present, no ``absent`` key present, every
    ``shapes`` predicate true: the component is ``kind``/``name``. Higher ``priority`` wins;
    among equal priorities the earlier rule wins."""

    kind: str
    name: str
    label: str
    keys: tuple[str, ...]
    shapes: tuple[Shape, ...] = ()
    absent: tuple[str, ...] = ()
    priority: int = 10
    facts: tuple[Fact, ...] = ()


# Frequently used keys.
_CROSS_K = "input_blocks.#.1.transformer_blocks.0.attn2.to_k.weight"  # ldm UNet cross-attention
_CROSS_K_DIFFUSERS = "down_blocks.#.attentions.0.transformer_blocks.0.attn2.to_k.weight"
_UNET_FACTS = (
    fact("model_channels", "input_blocks.0.0.weight", 0),
    fact("in_channels", "input_blocks.0.0.weight", 1),
    fact("context_dim", _CROSS_K, 1),
)
_CLIP_FC1 = "text_model.encoder.layers.0.mlp.fc1.weight"  # [4 * hidden, hidden]
_CLIP_FACTS = (fact("layers", "text_model.encoder.layers.#.mlp.fc1.weight", "count"),)
_OPENCLIP_QKV = "transformer.resblocks.0.attn.in_proj_weight"  # [3 * width, width]
_OPENCLIP_FACTS = (fact("layers", "transformer.resblocks.#.attn.in_proj_weight", "count"),)
_T5_FF = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"  # gated FF of the 24th block
_T5_FACTS = (fact("vocab_size", "shared.weight", 0),
             fact("layers", "encoder.block.#.layer.0.SelfAttention.q.weight", "count"))
_LLM_FACTS = (fact("hidden_size", "model.norm.weight", 0), fact("vocab_size", "model.embed_tokens.weight", 0),
              fact("layers", "model.layers.#.input_layernorm.weight", "count"))

RULES: tuple[Rule, ...] = (
    # --- Diffusion models: UNets, ldm layout (what model.diffusion_model.* holds) ---
    Rule("diffusion_model", "sd1", "Stable Diffusion 1.x UNet",
         keys=("input_blocks.0.0.weight", "time_embed.0.weight"), absent=("label_emb.0.0.weight",),
         shapes=(dim("input_blocks.0.0.weight", 0, 320), dim(_CROSS_K, 1, 768)), facts=_UNET_FACTS),
    Rule("diffusion_model", "sd2", "Stable Diffusion 2.x UNet",
         keys=("input_blocks.0.0.weight", "time_embed.0.weight"), absent=("label_emb.0.0.weight",),
         shapes=(dim("input_blocks.0.0.weight", 0, 320), dim(_CROSS_K, 1, 1024)), facts=_UNET_FACTS),
    Rule("diffusion_model", "sdxl", "SDXL base UNet",
         keys=("input_blocks.0.0.weight", "label_emb.0.0.weight"),
         shapes=(dim("label_emb.0.0.weight", 1, 2816), dim(_CROSS_K, 1, 2048)), facts=_UNET_FACTS),
    Rule("diffusion_model", "sdxl_refiner", "SDXL refiner UNet",
         keys=("input_blocks.0.0.weight", "label_emb.0.0.weight"),
         shapes=(dim("label_emb.0.0.weight", 1, 2560), dim(_CROSS_K, 1, 1280)), facts=_UNET_FACTS),
    # --- Diffusion models: UNets, diffusers layout ---
    Rule("diffusion_model", "sd1", "Stable Diffusion 1.x UNet (diffusers layout)",
         keys=("conv_in.weight", "time_embedding.linear_1.weight"), absent=("add_embedding.linear_1.weight",),
         shapes=(dim(_CROSS_K_DIFFUSERS, 1, 768),)),
    Rule("diffusion_model", "sd2", "Stable Diffusion 2.x UNet (diffusers layout)",
         keys=("conv_in.weight", "time_embedding.linear_1.weight"), absent=("add_embedding.linear_1.weight",),
         shapes=(dim(_CROSS_K_DIFFUSERS, 1, 1024),)),
    Rule("diffusion_model", "sdxl", "SDXL base UNet (diffusers layout)",
         keys=("conv_in.weight", "add_embedding.linear_1.weight"),
         shapes=(dim("add_embedding.linear_1.weight", 1, 2816), dim(_CROSS_K_DIFFUSERS, 1, 2048))),
    # --- Diffusion models: transformers ---
    Rule("diffusion_model", "sd3", "Stable Diffusion 3.x MMDiT",
         keys=("joint_blocks.0.context_block.attn.qkv.weight", "x_embedder.proj.weight"),
         shapes=(dim("x_embedder.proj.weight", 1, 16),),
         facts=(fact("hidden_size", "x_embedder.proj.weight", 0),
                fact("blocks", "joint_blocks.#.x_block.attn.qkv.weight", "count"),
                fact("mmdit_x", "joint_blocks.#.x_block.attn2.qkv.weight", "present"))),
    Rule("diffusion_model", "sd3", "Stable Diffusion 3.x MMDiT (diffusers layout)",
         keys=("pos_embed.proj.weight", "transformer_blocks.0.attn.add_q_proj.weight", "context_embedder.weight"),
         shapes=(dim("pos_embed.proj.weight", 1, 16),)),
    Rule("diffusion_model", "flux", "Flux.1 transformer",
         keys=("double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight", "vector_in.in_layer.weight"),
         facts=(fact("in_channels", "img_in.weight", 1),
                fact("guidance_embed", "guidance_in.in_layer.weight", "present"),
                fact("double_blocks", "double_blocks.#.img_attn.qkv.weight", "count"),
                fact("single_blocks", "single_blocks.#.linear1.weight", "count"))),
    Rule("diffusion_model", "flux", "Flux.1 transformer (diffusers layout)",
         keys=("x_embedder.weight", "context_embedder.weight", "single_transformer_blocks.0.attn.to_q.weight"),
         facts=(fact("guidance_embed", "time_text_embed.guidance_embedder.linear_1.weight", "present"),)),
    Rule("diffusion_model", "chroma", "Chroma (Flux-derived) transformer",
         keys=("double_blocks.0.img_attn.norm.key_norm.scale", "distilled_guidance_layer.norms.0.scale"),
         priority=20),
    Rule("diffusion_model", "qwen_image", "Qwen-Image MMDiT",
         keys=("txt_norm.weight", "img_in.weight", "transformer_blocks.0.img_mod.1.weight"),
         facts=(fact("in_channels", "img_in.weight", 1), fact("joint_attention_dim", "txt_norm.weight", 0),
                fact("layers", "transformer_blocks.#.img_mod.1.weight", "count"))),
    Rule("diffusion_model", "wan", "Wan 2.1 / Wan 2.2 14B video DiT",
         keys=("head.modulation", "patch_embedding.weight", "head.head.weight"),
         shapes=(dim("head.head.weight", 0, 64),),  # out_dim 16 x patch (1, 2, 2)
         facts=(fact("dim", "head.modulation", -1), fact("in_dim", "patch_embedding.weight", 1),
                fact("layers", "blocks.#.ffn.0.weight", "count"),
                fact("image_to_video", "img_emb.proj.0.bias", "present"),
                fact("vace", "vace_patch_embedding.weight", "present"))),
    Rule("diffusion_model", "wan22_5b", "Wan 2.2 TI2V 5B video DiT",
         keys=("head.modulation", "patch_embedding.weight", "head.head.weight"),
         shapes=(dim("head.head.weight", 0, 192),),  # out_dim 48 x patch (1, 2, 2)
         facts=(fact("dim", "head.modulation", -1), fact("layers", "blocks.#.ffn.0.weight", "count"))),
    Rule("diffusion_model", "hunyuan_video", "HunyuanVideo transformer",
         keys=("txt_in.individual_token_refiner.blocks.0.norm1.weight", "img_in.proj.weight"),
         shapes=(rank("img_in.proj.weight", 5),),  # Conv3d patch embed; HunyuanImage 2.1 has a 2-D one
         facts=(fact("in_channels", "img_in.proj.weight", 1), fact("guidance_embed", "guidance_in.*", "present"),
                fact("double_blocks", "double_blocks.#.img_mod.*", "count"),
                fact("single_blocks", "single_blocks.#.linear1.weight", "count"))),
    Rule("diffusion_model", "ltxv", "LTX-Video transformer",
         keys=("adaln_single.emb.timestep_embedder.linear_1.bias", "transformer_blocks.0.attn2.to_k.weight"),
         absent=("pos_embed.proj.bias",),  # PixArt (diffusers) shares adaln_single but has a patch embed
         facts=(fact("hidden_size", "transformer_blocks.0.attn2.to_k.weight", 0),
                fact("layers", "transformer_blocks.#.attn2.to_k.weight", "count"))),
    Rule("diffusion_model", "lumina2", "Lumina Image 2.0 NextDiT",
         keys=("cap_embedder.1.weight", "layers.0.attention.qkv.weight"),
         facts=(fact("cap_feat_dim", "cap_embedder.1.weight", 1),
                fact("layers", "layers.#.attention.qkv.weight", "count"))),
    # --- Text encoders (ComfyUI's detect_te_model reads the same keys) ---
    Rule("text_encoder", "clip_l", "CLIP-L (ViT-L/14 text, 768 wide)",
         keys=(_CLIP_FC1,), shapes=(dim(_CLIP_FC1, 1, 768),), facts=_CLIP_FACTS),
    Rule("text_encoder", "clip_h", "OpenCLIP ViT-H text (1024 wide)",
         keys=(_CLIP_FC1,), shapes=(dim(_CLIP_FC1, 1, 1024),), facts=_CLIP_FACTS),
    Rule("text_encoder", "clip_g", "OpenCLIP ViT-bigG text (CLIP-G, 1280 wide)",
         keys=(_CLIP_FC1,), shapes=(dim(_CLIP_FC1, 1, 1280),), facts=_CLIP_FACTS),
    Rule("text_encoder", "clip_h", "OpenCLIP ViT-H text (1024 wide, open_clip layout)",
         keys=(_OPENCLIP_QKV, "ln_final.weight"), shapes=(dim(_OPENCLIP_QKV, 1, 1024),), facts=_OPENCLIP_FACTS),
    Rule("text_encoder", "clip_g", "OpenCLIP ViT-bigG text (CLIP-G, 1280 wide, open_clip layout)",
         keys=(_OPENCLIP_QKV, "ln_final.weight"), shapes=(dim(_OPENCLIP_QKV, 1, 1280),), facts=_OPENCLIP_FACTS),
    Rule("text_encoder", "t5xxl", "T5-XXL v1.1 encoder (32128-token vocabulary)",
         keys=(_T5_FF, "shared.weight"), shapes=(dim(_T5_FF, -1, 4096), dim("shared.weight", 0, 32128)),
         priority=20, facts=_T5_FACTS),
    Rule("text_encoder", "umt5_xxl", "UMT5-XXL encoder (256384-token vocabulary)",
         keys=(_T5_FF, "shared.weight"), shapes=(dim(_T5_FF, -1, 4096), dim("shared.weight", 0, 256384)),
         priority=20, facts=_T5_FACTS),
    # Files without the embedding table: UMT5 keeps a relative-position bias in every block, T5 only in block 0.
    Rule("text_encoder", "umt5_xxl", "UMT5-XXL encoder (no embedding table; per-layer position bias)",
         keys=(_T5_FF, "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"),
         shapes=(dim(_T5_FF, -1, 4096),), priority=15, facts=_T5_FACTS),
    Rule("text_encoder", "t5xxl", "T5-XXL encoder (no embedding table)",
         keys=(_T5_FF,), shapes=(dim(_T5_FF, -1, 4096),), facts=_T5_FACTS),
    Rule("text_encoder", "qwen25_vl_7b", "Qwen2.5-VL 7B",
         keys=("model.layers.0.self_attn.k_proj.bias",), shapes=(dim("model.layers.0.self_attn.k_proj.bias", 0, 512),),
         facts=_LLM_FACTS + (fact("vision_tower", "visual.*", "present"),)),
    Rule("text_encoder", "qwen25_3b", "Qwen2.5-VL 3B",
         keys=("model.layers.0.self_attn.k_proj.bias",), shapes=(dim("model.layers.0.self_attn.k_proj.bias", 0, 256),),
         facts=_LLM_FACTS),
    Rule("text_encoder", "gemma2_2b", "Gemma 2 2B",
         keys=("model.layers.0.post_feedforward_layernorm.weight",), absent=("model.layers.0.self_attn.q_norm.weight",),
         shapes=(dim("model.layers.0.input_layernorm.weight", 0, 2304),), facts=_LLM_FACTS),
    Rule("text_encoder", "llama", "Llama 3 8B (llava-llama-3 / Llama 3.1)",
         keys=("model.layers.0.post_attention_layernorm.weight", "model.layers.0.self_attn.q_proj.weight"),
         absent=("model.layers.0.self_attn.k_proj.bias", "model.layers.0.post_feedforward_layernorm.weight"),
         shapes=(dim("model.layers.0.self_attn.q_proj.weight", 1, 4096),), facts=_LLM_FACTS),
    # --- VAEs (ComfyUI's VAE.__init__ tells them apart by the same keys) ---
    Rule("vae", "sd_vae", "SD1.x/SD2.x/SDXL VAE (KL-f8, 4 latent channels)",
         keys=("decoder.conv_in.weight",),
         shapes=(rank("decoder.conv_in.weight", 4), dim("decoder.conv_in.weight", 1, 4))),
    Rule("vae", "sd3_flux_vae", "SD3/Flux VAE (KL-f8, 16 latent channels)",
         keys=("decoder.conv_in.weight",),
         shapes=(rank("decoder.conv_in.weight", 4), dim("decoder.conv_in.weight", 1, 16))),
    Rule("vae", "wan21_vae", "Wan 2.1 / Qwen-Image VAE (3D causal, 16 latent channels)",
         keys=("decoder.middle.0.residual.0.gamma", "conv2.weight"),
         absent=("decoder.upsamples.0.upsamples.0.residual.2.weight",), shapes=(dim("conv2.weight", 0, 16),)),
    Rule("vae", "wan22_vae", "Wan 2.2 VAE (3D causal, 48 latent channels, 16x spatial)",
         keys=("decoder.middle.0.residual.0.gamma", "decoder.upsamples.0.upsamples.0.residual.2.weight"),
         facts=(fact("latent_channels", "conv2.weight", 0),)),
    Rule("vae", "hunyuan_video_vae", "HunyuanVideo VAE (3D causal KL, 16 latent channels)",
         keys=("decoder.conv_in.conv.weight", "post_quant_conv.weight"),
         shapes=(rank("decoder.conv_in.conv.weight", 5), dim("decoder.conv_in.conv.weight", 1, 16))),
    Rule("vae", "ltxv_vae", "LTX-Video VAE (128 latent channels)",
         keys=("decoder.up_blocks.0.res_blocks.0.conv1.conv.weight",),
         facts=(fact("decoder_width", "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight", 0),)),
    Rule("vae", "taesd", "TAESD/TAESDXL tiny autoencoder (4 latent channels)",
         keys=("taesd_decoder.1.weight",), shapes=(dim("taesd_decoder.1.weight", 1, 4),)),
    Rule("vae", "taesd_16ch", "TAESD3/TAEF1 tiny autoencoder (16 latent channels)",
         keys=("taesd_decoder.1.weight",), shapes=(dim("taesd_decoder.1.weight", 1, 16),)),
    Rule("vae", "taesd_decoder", "TAESD decoder half (belongs in models/vae_approx)",
         keys=("1.weight", "3.conv.0.weight", "19.weight"), shapes=(rank("1.weight", 4), dim("1.weight", 0, 64)),
         facts=(fact("latent_channels", "1.weight", 1),)),
    # --- ControlNets: they carry a UNet copy, so they outrank the UNet rules ---
    Rule("controlnet", "controlnet", "ControlNet (ldm layout)",
         keys=("input_hint_block.0.weight", "zero_convs.0.0.weight"), priority=80,
         facts=(fact("context_dim", _CROSS_K, 1), fact("adm_in_channels", "label_emb.0.0.weight", 1))),
    Rule("controlnet", "controlnet", "ControlNet (diffusers layout)",
         keys=("controlnet_cond_embedding.conv_in.weight",), priority=80),
    Rule("controlnet", "controlnet", "ControlNet for a DiT (SD3/Flux layout)",
         keys=("controlnet_blocks.0.weight",), priority=80),
    # --- LoRA and LyCORIS adapters ---
    Rule("lora", "lora", "LoRA (kohya/LyCORIS lora_down/lora_up)", keys=("*.lora_down.weight",), priority=90,
         facts=(fact("text_encoder", "lora_te*", "present"),)),
    Rule("lora", "lora", "LoRA (PEFT/diffusers lora_A/lora_B)", keys=("*.lora_A.weight",), priority=90,
         facts=(fact("text_encoder", "text_encoder*", "present"),)),
    Rule("lora", "lora", "LoRA (old diffusers lora.down/lora.up)", keys=("*.lora.down.weight",), priority=90),
    Rule("lora", "loha", "LoHa (LyCORIS Hadamard product)", keys=("*.hada_w1_a",), priority=90,
         facts=(fact("text_encoder", "lora_te*", "present"),)),
    Rule("lora", "lokr", "LoKr (LyCORIS Kronecker product)", keys=("*.lokr_w*",), priority=90,
         facts=(fact("text_encoder", "lora_te*", "present"),)),
    # --- Other parts ---
    Rule("other", "noise_schedule", "DDPM noise-schedule buffers (ldm checkpoints)", keys=("alphas_cumprod",)),
    Rule("other", "clip_vision", "CLIP vision encoder", keys=("vision_model.embeddings.patch_embedding.weight",)),
)

# Rules in the order they are tried: highest priority first, table order among equals.
_RULES_BY_PRIORITY = tuple(sorted(RULES, key=lambda r: -r.priority))

# Inside a component root, models are sometimes wrapped once more: ComfyUI's all-in-one files put
# text encoders under "transformer." and open_clip models sit under "model.".
INNER_PREFIXES = ("", "transformer.", "model.")


# --- Prefixes of all-in-one checkpoints ---


@dataclass(frozen=True)
class Prefix:
    """Keys starting with ``pattern`` form one component of ``kind``; only rules of that kind are tried.
    ``name``/``label`` describe the component when no rule matches."""

    pattern: str
    kind: str
    name: str = UNKNOWN
    label: str = ""


PREFIXES: tuple[Prefix, ...] = (
    Prefix("model.diffusion_model.", "diffusion_model"),  # ldm/sgm checkpoints and ComfyUI's own saves
    Prefix("first_stage_model.", "vae"),  # ldm/sgm checkpoints
    Prefix("vae.", "vae"),  # ComfyUI all-in-one checkpoints of DiT families
    Prefix("cond_stage_model.", "text_encoder"),  # SD1.x (CLIP-L), SD2.x (open_clip ViT-H)
    Prefix("conditioner.embedders.#.", "text_encoder"),  # SDXL: 0 = CLIP-L, 1 = open_clip bigG
    Prefix("text_encoders.*.", "text_encoder"),  # SD3, Flux, Wan, Qwen-Image, Lumina 2, ...: one per encoder
    Prefix("control_model.", "controlnet"),
    Prefix("model_ema.", "other", "ema", "EMA copy of the UNet weights"),
)
PREFIX_PATTERNS = tuple(p.pattern for p in PREFIXES)  # what the C reader's group_by takes


# --- What each diffusion-model family needs ---


@dataclass(frozen=True)
class Part:
    """A text encoder or VAE a family needs: the component name ``classify`` reports for it and the
    file ComfyUI's examples load."""

    name: str
    file: str
    optional: bool = False


@dataclass(frozen=True)
class FamilyNeeds:
    """What text-to-image needs besides the diffusion model, and the loader nodes that take it."""

    label: str
    clip_loader: str  # CLIPLoader, DualCLIPLoader or TripleCLIPLoader
    clip_type: str | None  # the loader's "type" input (TripleCLIPLoader has none)
    text_encoders: tuple[Part, ...]
    vae: Part
    why: str
    vae_also: tuple[str, ...] = ()  # other VAE component names that decode this family's latents
    vae_loader: str = "VAELoader"


_CLIP_L = Part("clip_l", "clip_l.safetensors")
_CLIP_G = Part("clip_g", "clip_g.safetensors")
_T5XXL = Part("t5xxl", "t5xxl_fp16.safetensors")
_UMT5 = Part("umt5_xxl", "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
_FLUX_AE = Part("sd3_flux_vae", "ae.safetensors")

FAMILY_NEEDS: dict[str, FamilyNeeds] = {
    "sd1": FamilyNeeds(
        "Stable Diffusion 1.x", "CLIPLoader", "stable_diffusion", (_CLIP_L,),
        Part("sd_vae", "vae-ft-mse-840000-ema-pruned.safetensors"),
        "SD1.x conditions on CLIP-L (768-wide tokens) and decodes a 4-channel KL-f8 latent.", vae_also=("taesd",)),
    "sd2": FamilyNeeds(
        "Stable Diffusion 2.x", "CLIPLoader", "stable_diffusion",
        (Part("clip_h", "text_encoder/model.safetensors of stabilityai/stable-diffusion-2-1"),),
        Part("sd_vae", "vae-ft-mse-840000-ema-pruned.safetensors"),
        "SD2.x conditions on OpenCLIP ViT-H (1024-wide tokens) and decodes a 4-channel KL-f8 latent.",
        vae_also=("taesd",)),
    "sdxl": FamilyNeeds(
        "SDXL", "DualCLIPLoader", "sdxl", (_CLIP_L, _CLIP_G), Part("sd_vae", "sdxl_vae.safetensors"),
        "SDXL conditions on CLIP-L and CLIP-G together (2048-wide tokens, 2816-wide pooled vector) and decodes a "
        "4-channel KL-f8 latent.", vae_also=("taesd",)),
    "sdxl_refiner": FamilyNeeds(
        "SDXL refiner", "CLIPLoader", "stable_diffusion", (_CLIP_G,), Part("sd_vae", "sdxl_vae.safetensors"),
        "The SDXL refiner conditions on CLIP-G alone (1280 wide) and decodes with the SDXL VAE.", vae_also=("taesd",)),
    "sd3": FamilyNeeds(
        "Stable Diffusion 3.x", "TripleCLIPLoader", None, (_CLIP_L, _CLIP_G, Part("t5xxl", _T5XXL.file, optional=True)),
        Part("sd3_flux_vae", "vae/diffusion_pytorch_model.safetensors of the stabilityai SD3.x repository"),
        "SD3.x conditions on CLIP-L + CLIP-G (T5-XXL optional) and decodes a 16-channel latent; its VAE usually "
        "ships inside the checkpoint.", vae_also=("taesd_16ch",)),
    "flux": FamilyNeeds(
        "Flux.1", "DualCLIPLoader", "flux", (_CLIP_L, _T5XXL), _FLUX_AE,
        "Flux.1 conditions on T5-XXL tokens plus a pooled CLIP-L vector and decodes a 16-channel latent with "
        "ae.safetensors.", vae_also=("taesd_16ch",)),
    "chroma": FamilyNeeds(
        "Chroma", "CLIPLoader", "chroma", (_T5XXL,), _FLUX_AE,
        "Chroma is Flux-derived but conditions on T5-XXL alone; it decodes with the Flux VAE."),
    "qwen_image": FamilyNeeds(
        "Qwen-Image", "CLIPLoader", "qwen_image", (Part("qwen25_vl_7b", "qwen_2.5_vl_7b_fp8_scaled.safetensors"),),
        Part("wan21_vae", "qwen_image_vae.safetensors"),
        "Qwen-Image conditions on Qwen2.5-VL 7B hidden states (3584 wide) and decodes a 16-channel latent with the "
        "Qwen-Image VAE (Wan 2.1 layout)."),
    "wan": FamilyNeeds(
        "Wan 2.x", "CLIPLoader", "wan", (_UMT5,), Part("wan21_vae", "wan_2.1_vae.safetensors"),
        "Wan 2.1 and the Wan 2.2 14B models condition on UMT5-XXL and decode a 16-channel latent with the Wan 2.1 "
        "VAE."),
    "wan22_5b": FamilyNeeds(
        "Wan 2.2 TI2V 5B", "CLIPLoader", "wan", (_UMT5,), Part("wan22_vae", "wan2.2_vae.safetensors"),
        "Wan 2.2 TI2V 5B conditions on UMT5-XXL but decodes a 48-channel latent: it needs the Wan 2.2 VAE, not the "
        "2.1 one."),
    "hunyuan_video": FamilyNeeds(
        "HunyuanVideo", "DualCLIPLoader", "hunyuan_video",
        (_CLIP_L, Part("llama", "llava_llama3_fp8_scaled.safetensors")),
        Part("hunyuan_video_vae", "hunyuan_video_vae_bf16.safetensors"),
        "HunyuanVideo conditions on LLaVA-Llama-3 8B tokens plus a pooled CLIP-L vector and decodes with its own 3D "
        "causal VAE."),
    "ltxv": FamilyNeeds(
        "LTX-Video", "CLIPLoader", "ltxv", (_T5XXL,), Part("ltxv_vae", "ltx-video-2b-v0.9.5.safetensors"),
        "LTX-Video conditions on T5-XXL; its 128-channel VAE ships inside the LTX-Video checkpoint (Load Checkpoint, "
        "VAE output).", vae_loader="CheckpointLoaderSimple"),
    "lumina2": FamilyNeeds(
        "Lumina Image 2.0", "CLIPLoader", "lumina2", (Part("gemma2_2b", "gemma_2_2b_fp16.safetensors"),), _FLUX_AE,
        "Lumina Image 2.0 conditions on Gemma 2 2B hidden states (2304 wide) and decodes a 16-channel latent with "
        "the Flux VAE."),
}

# LoRA target family: substrings of the kohya / modelspec metadata, then of the tensor names.
# The first hit wins, so more specific entries come first.
LORA_TARGET_METADATA = ("ss_base_model_version", "modelspec.architecture")
LORA_TARGET_HINTS: tuple[tuple[str, str], ...] = (
    ("sdxl", "sdxl"), ("stable-diffusion-xl", "sdxl"), ("sd3", "sd3"), ("stable-diffusion-v3", "sd3"),
    ("flux", "flux"), ("sd_v2", "sd2"), ("stable-diffusion-v2", "sd2"), ("sd_v1", "sd1"),
    ("stable-diffusion-v1", "sd1"), ("qwen", "qwen_image"), ("wan", "wan"), ("hunyuan-video", "hunyuan_video"),
    ("ltx", "ltxv"), ("lumina", "lumina2"),
)
LORA_KEY_HINTS: tuple[tuple[str, str], ...] = (
    ("lora_te2_", "sdxl"), ("lora_unet_double_blocks_", "flux"), ("img_mlp", "qwen_image"),
)

# ComfyUI loader nodes: the title the UI shows and the models/ folder each reads.
NODES: dict[str, tuple[str, str]] = {
    "CheckpointLoaderSimple": ("Load Checkpoint", "models/checkpoints"),
    "UNETLoader": ("Load Diffusion Model", "models/diffusion_models"),
    "CLIPLoader": ("Load CLIP", "models/text_encoders"),
    "DualCLIPLoader": ("DualCLIPLoader", "models/text_encoders"),
    "TripleCLIPLoader": ("TripleCLIPLoader", "models/text_encoders"),
    "VAELoader": ("Load VAE", "models/vae"),
    "LoraLoader": ("Load LoRA", "models/loras"),
    "LoraLoaderModelOnly": ("LoraLoaderModelOnly", "models/loras"),
    "ControlNetLoader": ("Load ControlNet Model", "models/controlnet"),
}
THIS_FILE = "<this file>"


# --- Results ---


@dataclass
class Component:
    """One part of a file. ``name`` is the family (diffusion model) or type (text encoder, VAE, ...),
    ``UNKNOWN`` when no rule matched; ``dtypes`` maps histogram names to bytes."""

    kind: str
    name: str
    label: str
    prefix: str
    tensors: int = 0
    parameters: int = 0
    bytes: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "label": self.label, "prefix": self.prefix,
                "tensors": self.tensors, "parameters": self.parameters, "bytes": self.bytes,
                "dtypes": dict(self.dtypes), "details": dict(self.details)}


@dataclass(frozen=True)
class Need:
    """Something a text-to-image run needs from another file. ``name`` and ``file`` are None when the
    family is unknown, so only the role can be named."""

    role: str  # "diffusion_model", "text_encoder" or "vae"
    name: str | None
    label: str
    file: str | None

    def to_dict(self) -> dict:
        return {"role": self.role, "name": self.name, "label": self.label, "file": self.file}


@dataclass
class LoaderStep:
    """One ComfyUI loader node to add: its class name, UI title, widget values and why."""

    node: str
    inputs: dict[str, str]
    why: str

    @property
    def title(self) -> str:
        return NODES.get(self.node, (self.node, ""))[0]

    @property
    def folder(self) -> str:
        return NODES.get(self.node, ("", ""))[1]

    def to_dict(self) -> dict:
        return {"node": self.node, "title": self.title, "folder": self.folder, "inputs": dict(self.inputs),
                "why": self.why}


@dataclass
class Anatomy:
    """The classified content of one file. ``family`` is the diffusion model's family when the file has
    one, else the name of its first recognised component, else ``UNKNOWN``."""

    components: list[Component]
    metadata: dict[str, str] = field(default_factory=dict)

    # -- what the file is --

    def of_kind(self, kind: str) -> list[Component]:
        return [c for c in self.components if c.kind == kind]

    @property
    def diffusion_model(self) -> Component | None:
        models = self.of_kind("diffusion_model")
        return models[0] if models else None

    @property
    def family(self) -> str:
        model = self.diffusion_model
        if model is not None:
            return model.name
        for component in self.components:
            if component.name != UNKNOWN and component.kind != "other":
                return component.name
        return UNKNOWN

    @property
    def family_label(self) -> str:
        needs = FAMILY_NEEDS.get(self.family)
        if needs is not None:
            return needs.label
        named = [c for c in self.components if c.name == self.family]
        return named[0].label if named else "unrecognised"

    @property
    def needs(self) -> FamilyNeeds | None:
        """The family's needs, when the file has a diffusion model of a known family."""
        return FAMILY_NEEDS.get(self.family) if self.diffusion_model is not None else None

    @property
    def tensors(self) -> int:
        return sum(c.tensors for c in self.components)

    @property
    def parameters(self) -> int:
        return sum(c.parameters for c in self.components)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    @property
    def dtypes(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for component in self.components:
            for name, size in component.dtypes.items():
                total[name] = total.get(name, 0) + size
        return _ordered_dtypes(total)

    # -- what it lacks --

    def missing_for_txt2img(self) -> list[Need]:
        """What a text-to-image run needs from other files: the diffusion model, the family's text
        encoders (optional ones left out) and its VAE. Empty when the file is complete."""
        names = {c.name for c in self.components}
        needs = self.needs
        missing: list[Need] = []
        if self.diffusion_model is None:
            missing.append(Need("diffusion_model", None, "a diffusion model", None))
        if needs is None:
            if not self.of_kind("text_encoder"):
                missing.append(Need("text_encoder", None, "the text encoder(s) of the model's family", None))
            if not self.of_kind("vae"):
                missing.append(Need("vae", None, "the VAE of the model's family", None))
            return missing
        for part in needs.text_encoders:
            if not part.optional and part.name not in names:
                missing.append(Need("text_encoder", part.name, _label_of(part.name), part.file))
        if not names & {needs.vae.name, *needs.vae_also}:
            missing.append(Need("vae", needs.vae.name, _label_of(needs.vae.name), needs.vae.file))
        return missing

    @property
    def complete(self) -> bool:
        """True when the file alone runs text-to-image through CheckpointLoaderSimple: a diffusion model
        of a known family under a checkpoint prefix (ComfyUI reads no text encoder or VAE next to an
        unprefixed model), its required text encoders and a VAE that decodes its latents."""
        model = self.diffusion_model
        return (self.needs is not None and model is not None and bool(model.prefix)
                and not self.missing_for_txt2img())

    # -- how to load it --

    def loading_advice(self, file_name: str = THIS_FILE) -> list[LoaderStep]:
        """The ComfyUI loader nodes that get a text-to-image run going with this file: the file's own
        loader first, then loaders for what it lacks. Empty when the file is not recognised."""
        model = self.diffusion_model
        if model is not None:
            return self._advice_for_model(model, file_name)
        steps: list[LoaderStep] = []
        for component in self.components:
            for step in _advice_for_part(component, file_name):
                same = [s for s in steps if (s.node, s.inputs) == (step.node, step.inputs)]
                if same:  # one loader serving several families: say so once
                    same[0].why = same[0].why.rstrip(".") + ", " + step.why.removeprefix(_TE_FOR)
                else:
                    steps.append(step)
        return steps

    def _advice_for_model(self, model: Component, file_name: str) -> list[LoaderStep]:
        needs = self.needs
        if model.name == UNKNOWN:
            return []  # ComfyUI's detection would not know it either
        has_te, has_vae = bool(self.of_kind("text_encoder")), bool(self.of_kind("vae"))
        if self.complete:
            return [LoaderStep("CheckpointLoaderSimple", {"ckpt_name": file_name},
                               f"The file holds everything {self.family_label} text-to-image needs: MODEL, CLIP "
                               "and VAE come from one node.")]
        steps: list[LoaderStep] = []
        if model.prefix and (has_te or has_vae):
            kept = ", ".join(c.label for c in self.components if c.kind in ("text_encoder", "vae"))
            steps.append(LoaderStep("CheckpointLoaderSimple", {"ckpt_name": file_name},
                                    f"The checkpoint carries the diffusion model and {kept}; use those outputs and "
                                    "load what is missing below."))
        else:
            why = f"The file holds only the {model.label}"
            if has_te or has_vae:
                why = f"The diffusion model is stored without a checkpoint prefix ({model.label})"
            steps.append(LoaderStep("UNETLoader", {"unet_name": file_name, "weight_dtype": "default"},
                                    why + "; CheckpointLoaderSimple would return no CLIP and no VAE for it."))
        if needs is None:
            return steps
        missing = {n.role for n in self.missing_for_txt2img()}
        if "text_encoder" in missing:
            encoders = " + ".join(_label_of(p.name) + (" (optional)" if p.optional else "")
                                  for p in needs.text_encoders)
            steps.append(_clip_step(needs, f"{needs.label} conditions on {encoders}."))
        if "vae" in missing:
            steps.append(_vae_step(needs))
        return steps

    # -- output --

    def to_dict(self) -> dict:
        """JSON-serialisable summary (metadata values are left out: some are megabytes of tags)."""
        return {
            "family": self.family,
            "family_label": self.family_label,
            "complete": self.complete,
            "tensors": self.tensors,
            "parameters": self.parameters,
            "bytes": self.bytes,
            "dtypes": self.dtypes,
            "components": [c.to_dict() for c in self.components],
            "missing_for_txt2img": [n.to_dict() for n in self.missing_for_txt2img()],
            "loading_advice": [s.to_dict() for s in self.loading_advice()],
            "family_note": self.needs.why if self.needs else None,
            "metadata_keys": sorted(self.metadata),
        }

    def describe(self, file_name: str = THIS_FILE) -> str:
        """Plain-words report, several lines, no trailing newline."""
        state = "complete for text-to-image" if self.complete else "not complete for text-to-image"
        lines = [f"{self.family_label} ({self.family}): {state}; {self.tensors} tensors, "
                 f"{_count(self.parameters)} parameters, {format_bytes(self.bytes)} [{_dtype_text(self.dtypes)}]"]
        for c in self.components:
            extra = ", ".join(f"{k}={v}" for k, v in c.details.items())
            lines.append(f"  {c.kind:<15} {c.label} at '{c.prefix}': {c.tensors} tensors, {_count(c.parameters)} "
                         f"parameters, {format_bytes(c.bytes)} [{_dtype_text(c.dtypes)}]"
                         + (f" ({extra})" if extra else ""))
        missing = self.missing_for_txt2img()
        if missing:
            lines.append("missing for text-to-image: " + "; ".join(
                n.label + (f" ({n.file})" if n.file else "") for n in missing))
        if self.needs is not None and not self.complete:
            lines.append(f"why: {self.needs.why}")
        advice = self.loading_advice(file_name)
        if advice:
            lines.append("load with:")
            for step in advice:
                inputs = ", ".join(f"{k}={v}" for k, v in step.inputs.items())
                lines.append(f"  {step.node} ({step.title}, {step.folder}): {inputs}. {step.why}")
        return "\n".join(lines)


# --- Classification ---


# A group is what the C reader's group_by gives, one tuple per component prefix:
# (prefix, pattern index into PREFIXES or -1, keys: {name after the prefix: shape},
#  tensors, parameters, bytes, {safetensors dtype: bytes}).
# _group_by_prefix makes the same tuples from a plain mapping, so both paths share the code below.
# The rules look keys up through a per-group "found" cache: literal keys are dict lookups, and each
# "#" pattern is scanned once.

_UNSEEN = object()


def _find(keys: Mapping[str, tuple], found: dict, pattern: str) -> str | None:
    """The key matching ``pattern`` with the smallest block indices, or None."""
    if pattern in keys:  # a literal key, present
        return pattern
    hit = found.get(pattern, _UNSEEN)
    if hit is _UNSEEN:
        hit = found[pattern] = None if _is_literal(pattern) else _scan(keys, pattern)
    return hit


def _candidates(keys: Mapping[str, tuple], pattern: str) -> tuple[re.Pattern[str], Iterable[str]]:
    """The pattern's regex and the keys that start with its literal head and end with its literal
    tail: filtered in C for the reader's GroupKeys (no str per tensor), in Python for a dict."""
    head, regex = _compile(pattern)
    tail = _tail(pattern)
    matching = getattr(keys, "matching", None)
    if matching is not None:
        return regex, matching(head, tail)
    return regex, (key for key in keys if key.startswith(head) and key.endswith(tail))


def _scan(keys: Mapping[str, tuple], pattern: str) -> str | None:
    regex, candidates = _candidates(keys, pattern)
    best: tuple[tuple[int, ...], str] | None = None
    for key in candidates:
        m = regex.fullmatch(key)
        if m:
            candidate = (tuple(map(int, m.groups())), key)  # every group is a "#" run of digits
            if best is None or candidate < best:
                best = candidate
    return best[1] if best else None


def _block_count(keys: Mapping[str, tuple], pattern: str) -> int:
    """1 + the highest first ``#`` index among keys matching ``pattern`` (0 if none): a block count
    that stays right when a header sample leaves middle blocks out."""
    regex, candidates = _candidates(keys, pattern)
    top = -1
    for key in candidates:
        m = regex.fullmatch(key)
        if m and m.groups():
            top = max(top, int(m.group(1)))
    return top + 1


def _shape_value(shape: tuple[int, ...], axis: int | str) -> int | None:
    if axis == "rank":
        return len(shape)
    return shape[axis] if -len(shape) <= axis < len(shape) else None  # type: ignore[operator]


@dataclass(frozen=True)
class _Check:
    """A rule with one inner prefix applied: the full keys it looks for, ready to test a group."""

    rule: Rule
    inner: str
    anchor: str | None  # the first literal key: a group without it cannot match
    keys: tuple[str, ...]
    absent: tuple[str, ...]
    shapes: tuple[tuple[str, int | str, tuple[int, ...]], ...]
    facts: tuple[tuple[str, str, int | str], ...]  # (name, full key, axis)

    @classmethod
    def of(cls, rule: Rule, inner: str) -> _Check:
        anchor = next((key for key in rule.keys if _is_literal(key)), None)
        return cls(rule, inner, inner + anchor if anchor is not None else None,
                   tuple(inner + key for key in rule.keys), tuple(inner + key for key in rule.absent),
                   tuple((inner + p.key, p.axis, p.values) for p in rule.shapes),
                   tuple((f.name, inner + f.key, f.axis) for f in rule.facts))

    def matches(self, keys: Mapping[str, tuple], found: dict) -> bool:
        for key in self.keys:
            if key not in keys and _find(keys, found, key) is None:
                return False
        for key in self.absent:
            if _find(keys, found, key) is not None:
                return False
        for pattern, axis, values in self.shapes:
            key = _find(keys, found, pattern)
            if key is None:
                return False
            shape = keys[key]
            if axis == "rank":
                if len(shape) not in values:
                    return False
            elif not (-len(shape) <= axis < len(shape) and shape[axis] in values):  # type: ignore[operator]
                return False
        return True

    def details(self, keys: Mapping[str, tuple], found: dict) -> dict[str, object]:
        details: dict[str, object] = {}
        for name, pattern, axis in self.facts:
            if axis == "count":
                value: object = _block_count(keys, pattern)
                if value == 0:
                    continue
            elif axis == "present":
                value = _find(keys, found, pattern) is not None
            else:
                key = _find(keys, found, pattern)
                if key is None:
                    continue
                value = _shape_value(keys[key], axis)
            details[name] = value
        return details


class _RuleIndex:
    """The checks (rule x inner prefix) a group of one kind tries, in priority order, indexed by
    their anchor key: a group with fewer keys than there are checks looks its keys up in the index
    instead of trying every check."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.checks = [_Check.of(rule, inner) for rule in rules for inner in INNER_PREFIXES]
        self.by_anchor: dict[str, list[int]] = {}
        self.unanchored: list[int] = []
        for position, check in enumerate(self.checks):
            if check.anchor is None:
                self.unanchored.append(position)
            else:
                self.by_anchor.setdefault(check.anchor, []).append(position)

    def best(self, keys: Mapping[str, tuple], found: dict) -> _Check | None:
        """The highest-priority check (first in RULES among equals) the group passes."""
        checks = self.checks
        if len(keys) < len(checks):
            candidates = list(self.unanchored)
            by_anchor = self.by_anchor
            for key in keys:
                if key in by_anchor:
                    candidates.extend(by_anchor[key])
            if not candidates:
                return None
            candidates.sort()
            todo: Iterable[_Check] = (checks[i] for i in candidates)
        else:
            todo = (c for c in checks if c.anchor is None or c.anchor in keys)
        for check in todo:
            if check.matches(keys, found):
                return check
        return None


# The rules a group tries: those of its prefix's kind, or all of them (kind None).
_RULE_INDEX: dict[str | None, _RuleIndex] = {
    kind: _RuleIndex([rule for rule in _RULES_BY_PRIORITY if kind is None or rule.kind == kind])
    for kind in (None, *KINDS)
}


def _prefix_of(name: str) -> tuple[str, int]:
    for index, candidate in enumerate(PREFIXES):
        m = _compile(candidate.pattern)[1].match(name)
        if m:
            return m.group(0), index
    return "", -1


def _group_by_prefix(tensors: Mapping[str, Sequence]) -> list[tuple]:
    """What the C reader's ``group_by`` gives, computed from a name -> (dtype, shape[, bytes]) mapping."""
    groups: dict[str, list] = {}
    for name, entry in tensors.items():
        prefix, pattern = _prefix_of(name)
        group = groups.get(prefix)
        if group is None:
            group = groups[prefix] = [prefix, pattern, {}, 0, 0, 0, {}]
        dtype, shape, size = _entry(entry)
        group[2][name[len(prefix):]] = shape
        group[3] += 1
        group[4] += _numel(shape)
        group[5] += size
        group[6][dtype] = group[6].get(dtype, 0) + size
    return [tuple(g) for g in groups.values()]


def _entry(entry: Sequence) -> tuple[str, tuple[int, ...], int]:
    """(dtype, shape, bytes) from a (dtype, shape) or (dtype, shape, bytes) entry."""
    dtype = str(entry[0])
    shape = tuple(int(d) for d in entry[1])
    if len(entry) > 2 and entry[2] is not None:
        return dtype, shape, int(entry[2])
    bits = DTYPES.get(dtype, ("other", 0))[1]
    return dtype, shape, (_numel(shape) * bits + 7) // 8


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ComfyUI's scaled-fp8 files mark a model with a "scaled_fp8" tensor at its root.
_SCALED_FP8_KEYS = tuple(inner + "scaled_fp8" for inner in INNER_PREFIXES)
assert len(_SCALED_FP8_KEYS) == 3  # _component tests the three inline
_UNRECOGNISED = {kind: f"unrecognised {kind.replace('_', ' ')}" for kind in KINDS}


def _component(group: tuple, metadata: Mapping[str, str]) -> Component:
    prefix, pattern, keys, tensors, parameters, nbytes, dtype_bytes = group
    spec = PREFIXES[pattern] if pattern >= 0 else None
    if len(dtype_bytes) == 1:  # most components hold one dtype
        ((dtype, size),) = dtype_bytes.items()
        dtypes = {DTYPES.get(dtype, _OTHER)[0]: size}
    else:
        merged: dict[str, int] = {}
        for dtype, size in dtype_bytes.items():
            name = DTYPES.get(dtype, _OTHER)[0]
            merged[name] = merged.get(name, 0) + size
        dtypes = _ordered_dtypes(merged)
    found: dict = {}
    check = _RULE_INDEX[spec.kind if spec else None].best(keys, found)
    if check is not None:
        rule = check.rule
        component = Component(rule.kind, rule.name, rule.label, prefix, tensors, parameters, nbytes, dtypes,
                              check.details(keys, found))
    elif spec is not None:
        component = Component(spec.kind, spec.name, spec.label or _UNRECOGNISED[spec.kind], prefix, tensors,
                              parameters, nbytes, dtypes, {})
    else:
        component = Component("other", UNKNOWN, "unrecognised tensors", prefix, tensors, parameters, nbytes,
                              dtypes, {})
    if _SCALED_FP8_KEYS[0] in keys or _SCALED_FP8_KEYS[1] in keys or _SCALED_FP8_KEYS[2] in keys:
        component.details["scaled_fp8"] = True
    if component.kind == "lora":
        target = _lora_target(keys, metadata)
        if target:
            component.details["target"] = target
    return component


def _lora_target(keys: Mapping[str, tuple], metadata: Mapping[str, str]) -> str | None:
    for key in LORA_TARGET_METADATA:
        value = str(metadata.get(key, "")).lower()
        for needle, family in LORA_TARGET_HINTS:
            if needle in value:
                return family
    for needle, family in LORA_KEY_HINTS:
        if any(needle in key for key in keys):
            return family
    return None


def classify(tensors: Mapping[str, Sequence], metadata: Mapping[str, str] | None = None) -> Anatomy:
    """Classify a safetensors header: ``tensors`` maps each tensor name to ``(dtype, shape)`` or
    ``(dtype, shape, nbytes)`` with safetensors dtype strings ("F16", "BF16", "F8_E4M3", ...);
    ``metadata`` is the ``__metadata__`` dict. Pure function: no I/O. Unrecognised content comes
    out as components named ``UNKNOWN``; it raises only for entries that are not (dtype, shape)."""
    return classify_groups(_group_by_prefix(tensors), metadata)


def classify_groups(groups: Sequence[tuple], metadata: Mapping[str, str] | None = None) -> Anatomy:
    """Classify what ``read_safetensors_header(path, group_by=PREFIX_PATTERNS)`` returns: the C
    reader has grouped the tensors by prefix and totalled each group, so no Python code walks the
    tensors one by one (the fast path for real files)."""
    metadata = dict(metadata) if metadata else {}
    components = [_component(group, metadata) for group in groups]
    if len(components) > 1:
        components.sort(key=_component_order)
    return Anatomy(components, metadata)


def _component_order(c: Component) -> tuple[int, str]:
    return _KIND_ORDER[c.kind], c.prefix


def read_anatomy(native, path: str) -> tuple[Anatomy, dict]:
    """Read the header of the safetensors file at ``path`` with the C reader (``native`` is the
    loaded ``_native`` module) and classify it: (anatomy, the reader's result). Raises the reader's
    SafetensorsError for a bad file."""
    header = native.read_safetensors_header(path, group_by=PREFIX_PATTERNS)
    return classify_groups(header["groups"], header["metadata"]), header


def unreadable_facts(path: str, exc) -> dict:
    """What can be said of a file the reader refused (``exc``: its SafetensorsError): the message, the
    reader's status and byte offset, the bytes on disk and, when the header itself is whole, the bytes it
    declares (so a partial download says how much of it is there). Never raises."""
    facts = {"error": str(exc), "status": getattr(exc, "status", None), "offset": getattr(exc, "offset", None),
             "file_bytes": None, "expected_bytes": None}
    try:
        facts["file_bytes"] = os.path.getsize(path)
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if 0 < length <= MAX_DECLARED_HEADER:
                header = json.loads(f.read(length))
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
                        and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
                if ends and all(isinstance(e, int) for e in ends):
                    facts["expected_bytes"] = 8 + length + max(ends)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return facts


MAX_DECLARED_HEADER = 100 << 20  # the C reader's own bound on a header


# --- Advice helpers ---


_TE_FOR = "As a text encoder of "


def _label_of(name: str) -> str:
    for rule in RULES:
        if rule.name == name:
            return rule.label
    return name


def _clip_step(needs: FamilyNeeds, why: str, mine: str | None = None, file_name: str = THIS_FILE) -> LoaderStep:
    """The family's text-encoder loader; the part named ``mine`` is this file."""
    files = [file_name if p.name == mine else p.file for p in needs.text_encoders]
    if needs.clip_loader == "CLIPLoader":
        inputs = {"clip_name": files[0]}
    else:
        inputs = {f"clip_name{i}": f for i, f in enumerate(files, start=1)}
    if needs.clip_type is not None:
        inputs["type"] = needs.clip_type
    return LoaderStep(needs.clip_loader, inputs, why)


def _vae_step(needs: FamilyNeeds, file_name: str | None = None) -> LoaderStep:
    file = file_name or needs.vae.file
    why = f"{needs.label} decodes with the {_label_of(needs.vae.name)}."
    if needs.vae_loader == "CheckpointLoaderSimple":
        return LoaderStep("CheckpointLoaderSimple", {"ckpt_name": file}, why + " Use the VAE output of that node.")
    return LoaderStep("VAELoader", {"vae_name": file}, why)


def _advice_for_part(component: Component, file_name: str) -> list[LoaderStep]:
    """Loader steps for a file without a diffusion model: one per family a text encoder serves,
    one VAELoader for a VAE, the LoRA or ControlNet loader."""
    name = component.name
    if component.kind == "text_encoder":
        return [_clip_step(needs, f"{_TE_FOR}{needs.label}.", mine=name, file_name=file_name)
                for needs in FAMILY_NEEDS.values() if any(p.name == name for p in needs.text_encoders)]
    if component.kind == "vae":
        if name == "taesd_decoder":
            channels = component.details.get("latent_channels")
            return [LoaderStep("VAELoader", {"vae_name": "taesd" if channels == 4 else "taef1"},
                               "A TAESD half goes in models/vae_approx next to its encoder half; VAELoader then lists "
                               "the pair as taesd/taesdxl (4 channels) or taesd3/taef1 (16 channels).")]
        users = [n.label for n in FAMILY_NEEDS.values() if name == n.vae.name or name in n.vae_also]
        if not users:
            return []
        return [LoaderStep("VAELoader", {"vae_name": file_name}, "Decodes the latents of " + ", ".join(users) + ".")]
    if component.kind == "lora":
        target = component.details.get("target")
        scope = f" for {FAMILY_NEEDS[target].label}" if target in FAMILY_NEEDS else ""
        if component.details.get("text_encoder"):
            return [LoaderStep("LoraLoader", {"lora_name": file_name},
                               f"An adapter{scope} that patches the diffusion model and the text encoder.")]
        return [LoaderStep("LoraLoaderModelOnly", {"lora_name": file_name},
                           f"An adapter{scope} that patches the diffusion model only.")]
    if component.kind == "controlnet":
        return [LoaderStep("ControlNetLoader", {"control_net_name": file_name},
                           "A ControlNet: it steers the diffusion model through the conditioning.")]
    return []


# --- Formatting ---


def _ordered_dtypes(sizes: Mapping[str, int]) -> dict[str, int]:
    if len(sizes) <= 1:  # most components hold one dtype
        return dict(sizes)
    return {name: sizes[name] for name in DTYPE_ORDER if name in sizes}


def _count(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def _dtype_text(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {format_bytes(size)}" for name, size in sizes.items())
