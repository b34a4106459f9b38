"""Checkpoint anatomy: classify() on header-only fixtures of real file layouts, the rule table's
triggers and near misses, the loading advice, and the dtype histogram."""

import copy
import json
import os

import pytest

from comfy_nodes.analysis import anatomy
from comfy_nodes.analysis.anatomy import FAMILY_NEEDS, RULES, UNKNOWN, classify
from comfy_nodes.demo.tiny_checkpoint import tiny_unet_shapes, tiny_vae_shapes

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "families")
FIXTURE_NAMES = sorted(f[:-5] for f in os.listdir(FIXTURES) if f.endswith(".json"))

# The "type" choices of ComfyUI 0.3.64's loader nodes (nodes.py; TripleCLIPLoader has no type).
CLIP_LOADER_TYPES = {
    "CLIPLoader": {"stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
                   "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"},
    "DualCLIPLoader": {"sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"},
    "TripleCLIPLoader": {None},
}


def load(name):
    with open(os.path.join(FIXTURES, name + ".json")) as f:
        return json.load(f)


def classify_fixture(name, edit=None):
    data = load(name)
    tensors = data["tensors"]
    if edit is not None:
        tensors = copy.deepcopy(tensors)
        edit(tensors)
    return classify(tensors, data.get("metadata"))


def set_dim(tensors, suffix, axis, value):
    """Set shape[axis] of every tensor whose name ends with ``suffix``."""
    hits = [k for k in tensors if k.endswith(suffix)]
    assert hits, suffix
    for k in hits:
        tensors[k][1][axis] = value


# --- Every fixture ---


def test_fixture_set_covers_the_issue():
    families = {load(n)["expect"]["family"] for n in FIXTURE_NAMES}
    assert {"sd1", "sd2", "sdxl", "sdxl_refiner", "sd3", "flux", "qwen_image", "wan", "wan22_5b", "hunyuan_video",
            "ltxv", "lumina2"} <= families
    assert {"clip_l", "clip_g", "t5xxl", "umt5_xxl", "qwen25_vl_7b", "llama"} <= families
    assert {"sd_vae", "sd3_flux_vae", "wan21_vae", "wan22_vae", "hunyuan_video_vae", "ltxv_vae",
            "taesd_decoder"} <= families


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_classifies_as_expected(name):
    data = load(name)
    assert "imitates" in data["note"].lower()
    expect = data["expect"]
    result = classify(data["tensors"], data.get("metadata"))
    assert result.family == expect["family"]
    assert sorted(c.kind for c in result.components) == sorted(expect["components"])
    assert result.complete is expect["complete"]
    if "names" in expect:
        assert sorted(c.name for c in result.components) == sorted(expect["names"])
    assert result.tensors == len(data["tensors"])
    assert sum(c.tensors for c in result.components) == len(data["tensors"])
    assert result.complete == (not result.missing_for_txt2img() and result.diffusion_model is not None)
    json.dumps(result.to_dict())  # serialisable
    assert result.describe(name + ".safetensors")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_component_totals_add_up(name):
    data = load(name)
    result = classify(data["tensors"])
    for c in result.components:
        assert sum(c.dtypes.values()) == c.bytes
        assert c.parameters > 0 and c.bytes > 0
    assert sum(result.dtypes.values()) == result.bytes


def test_prefixes_of_an_all_in_one_checkpoint():
    result = classify_fixture("sd3_medium_incl_clips_t5xxlfp8")
    assert {c.name: c.prefix for c in result.components} == {
        "sd3": "model.diffusion_model.",
        "clip_l": "text_encoders.clip_l.",
        "clip_g": "text_encoders.clip_g.",
        "t5xxl": "text_encoders.t5xxl.",
        "sd3_flux_vae": "first_stage_model.",
    }


def test_details_read_from_shapes_survive_elided_blocks():
    qwen = classify_fixture("qwen_image_diffusion_only").diffusion_model
    assert qwen.details == {"in_channels": 64, "joint_attention_dim": 3584, "layers": 60}
    flux = classify_fixture("flux1_dev_diffusion_only").diffusion_model
    assert flux.details["double_blocks"] == 19 and flux.details["single_blocks"] == 38
    assert flux.details["guidance_embed"] is True


# --- Rules: a trigger and a near miss each ---

UNET = "model.diffusion_model."
NEAR_MISSES = [
    # (fixture, prefix of the component the edit touches, edit, name it must then get, why)
    ("sd15_checkpoint", UNET, lambda t: set_dim(t, "attn2.to_k.weight", 1, 1024), "sd2", "context_dim 1024 is SD2"),
    ("sd21_checkpoint", UNET, lambda t: set_dim(t, "attn2.to_k.weight", 1, 768), "sd1", "context_dim 768 is SD1"),
    ("sd15_checkpoint", UNET, lambda t: set_dim(t, "attn2.to_k.weight", 1, 4096), UNKNOWN,
     "no UNet family has 4096-wide context"),
    ("sd15_checkpoint", UNET, lambda t: t.update({UNET + "label_emb.0.0.weight": ["F32", [1280, 2816]]}), UNKNOWN,
     "label_emb with 768-wide context is not SD1"),
    ("sdxl_base_checkpoint", UNET, lambda t: set_dim(t, "label_emb.0.0.weight", 1, 2560), UNKNOWN,
     "adm 2560 with 2048-wide context is neither SDXL base nor refiner"),
    ("sdxl_refiner_checkpoint", UNET, lambda t: (set_dim(t, "label_emb.0.0.weight", 1, 2816),
                                                 set_dim(t, "attn2.to_k.weight", 1, 2048)), "sdxl",
     "adm 2816 with 2048-wide context is SDXL base"),
    ("te_clip_l", "", lambda t: set_dim(t, "mlp.fc1.weight", 1, 1280), "clip_g", "hidden 1280 is CLIP-G"),
    ("te_clip_g", "", lambda t: set_dim(t, "mlp.fc1.weight", 1, 768), "clip_l", "hidden 768 is CLIP-L"),
    ("te_clip_g", "", lambda t: set_dim(t, "mlp.fc1.weight", 1, 1024), "clip_h", "hidden 1024 is CLIP-H"),
    ("te_t5xxl_fp16", "", lambda t: set_dim(t, "shared.weight", 0, 256384), "umt5_xxl", "vocab 256384 is UMT5"),
    ("te_umt5_xxl_fp8_scaled", "", lambda t: set_dim(t, "shared.weight", 0, 32128), "t5xxl", "vocab 32128 is T5"),
    ("te_umt5_xxl_fp8_scaled", "", lambda t: t.pop("shared.weight"), "umt5_xxl",
     "no vocabulary: a position bias in every block is UMT5"),
    ("te_t5xxl_fp16", "", lambda t: t.pop("shared.weight"), "t5xxl", "no vocabulary: bias in block 0 only is T5"),
    ("te_qwen25_vl_7b_fp8_scaled", "", lambda t: set_dim(t, "k_proj.bias", 0, 256), "qwen25_3b",
     "k_proj bias 256 is Qwen2.5 3B"),
    ("te_llava_llama3_fp8_scaled", "", lambda t: set_dim(t, "self_attn.q_proj.weight", 1, 3072), UNKNOWN,
     "a 3072-wide Llama is not the 8B encoder"),
    ("wan21_t2v_14b_diffusion_only", "", lambda t: set_dim(t, "head.head.weight", 0, 192), "wan22_5b",
     "48 output channels is Wan 2.2 5B"),
    ("wan22_ti2v_5b_diffusion_only", "", lambda t: set_dim(t, "head.head.weight", 0, 64), "wan",
     "16 output channels is Wan 2.1/2.2 14B"),
    ("flux1_dev_diffusion_only", "", lambda t: t.update({"distilled_guidance_layer.norms.0.scale": ["BF16", [5120]]}),
     "chroma", "a distilled guidance layer is Chroma"),
    ("flux1_dev_diffusion_only", "", lambda t: t.pop("vector_in.in_layer.weight"), UNKNOWN, "Flux has vector_in"),
    ("qwen_image_diffusion_only", "", lambda t: t.pop("txt_norm.weight"), UNKNOWN, "Qwen-Image has txt_norm"),
    ("ltxv_2b_checkpoint", UNET, lambda t: t.update({UNET + "pos_embed.proj.bias": ["BF16", [1152]]}), UNKNOWN,
     "adaln_single plus a patch embed is PixArt, not LTX-Video"),
    ("hunyuan_video_t2v_diffusion_only", "", lambda t: t.update({"img_in.proj.weight": ["BF16", [3072, 64, 2, 2]]}),
     UNKNOWN, "a 2-D patch embed is HunyuanImage, not HunyuanVideo"),
    ("vae_sd_kl_f8", "", lambda t: set_dim(t, "decoder.conv_in.weight", 1, 16), "sd3_flux_vae", "16 latent channels"),
    ("vae_flux_ae", "", lambda t: set_dim(t, "decoder.conv_in.weight", 1, 4), "sd_vae", "4 latent channels"),
    ("vae_wan21", "", lambda t: t.update({"decoder.upsamples.0.upsamples.0.residual.2.weight": ["BF16", [1]]}),
     "wan22_vae", "nested upsample blocks are the Wan 2.2 VAE"),
    ("vae_hunyuan_video", "", lambda t: set_dim(t, "decoder.conv_in.conv.weight", 1, 32), UNKNOWN,
     "32 latent channels is not the HunyuanVideo VAE"),
    ("controlnet_sd15", "control_model.", lambda t: [t.pop(k) for k in list(t) if "zero_convs" in k], UNKNOWN,
     "control_model. without zero convs is not a recognised ControlNet"),
]


def component_at(result, prefix):
    [component] = [c for c in result.components if c.prefix == prefix]
    return component


@pytest.mark.parametrize("name, prefix, edit, expected, why", NEAR_MISSES, ids=[n[4] for n in NEAR_MISSES])
def test_rule_trigger_and_near_miss(name, prefix, edit, expected, why):
    before = component_at(classify_fixture(name), prefix)
    after = component_at(classify_fixture(name, edit), prefix)
    assert after.name == expected, why
    assert (after.name, after.label) != (before.name, before.label), "the edit must change which rule fires"
    # Under a checkpoint prefix the kind stays; unprefixed, an unrecognised group is "other".
    assert after.kind == (before.kind if prefix or expected != UNKNOWN else "other")


def test_unprefixed_sd_unet_near_miss_has_no_kind_hint():
    tensors = {k.removeprefix("model.diffusion_model."): v for k, v in load("sd15_checkpoint")["tensors"].items()
               if k.startswith("model.diffusion_model.")}
    assert classify(tensors).family == "sd1"
    set_dim(tensors, "attn2.to_k.weight", 1, 4096)
    result = classify(tensors)
    assert result.family == UNKNOWN
    assert [c.kind for c in result.components] == ["other"]


def test_controlnet_outranks_the_unet_it_contains():
    tensors = {k.removeprefix("control_model."): v for k, v in load("controlnet_sd15")["tensors"].items()}
    result = classify(tensors)
    assert [c.kind for c in result.components] == ["controlnet"]
    assert result.components[0].details["context_dim"] == 768


def test_lora_target_from_metadata_and_keys():
    data = load("lora_sdxl_kohya")
    lora = classify(data["tensors"], data["metadata"]).components[0]
    assert lora.details == {"text_encoder": True, "target": "sdxl"}
    assert classify(data["tensors"]).components[0].details["target"] == "sdxl"  # from lora_te2_ keys
    peft = {"transformer_blocks.0.img_mlp.net.0.proj.lora_A.weight": ("BF16", (16, 3072)),
            "transformer_blocks.0.img_mlp.net.0.proj.lora_B.weight": ("BF16", (12288, 16))}
    result = classify(peft)
    assert result.family == "lora"
    assert result.components[0].details == {"text_encoder": False, "target": "qwen_image"}
    [step] = result.loading_advice("qwen_lora.safetensors")
    assert (step.node, step.inputs) == ("LoraLoaderModelOnly", {"lora_name": "qwen_lora.safetensors"})


# --- Unknown input ---


@pytest.mark.parametrize("tensors", [
    {},
    {"weight": ("F32", (3, 3))},
    {"foo.bar": ("X99", (2, 2)), "baz": ("F4", ()), "qux": ("F16", [])},
    {"model.diffusion_model.something": ("F16", (4,)), "vae.decoder.whatever": ("BF16", (1, 1))},
    {"text_encoders.mystery.transformer.layer.weight": ("F16", (8, 8))},
], ids=["empty", "one tensor", "odd dtypes", "unknown parts", "unknown encoder"])
def test_unknown_files_do_not_crash(tensors):
    result = classify(tensors, None)
    assert result.family == UNKNOWN
    assert result.complete is False
    assert all(c.name == UNKNOWN for c in result.components)
    assert result.tensors == len(tensors)
    json.dumps(result.to_dict())
    result.describe()
    roles = [n.role for n in result.missing_for_txt2img()]
    if result.diffusion_model is None:
        assert roles[0] == "diffusion_model"
    assert result.loading_advice() == []


def test_unknown_prefixed_parts_keep_the_prefix_kind():
    result = classify({"model.diffusion_model.something": ("F16", (4,)), "vae.decoder.whatever": ("BF16", (1, 1))})
    assert sorted((c.kind, c.name) for c in result.components) == [("diffusion_model", UNKNOWN), ("vae", UNKNOWN)]
    assert [n.role for n in result.missing_for_txt2img()] == ["text_encoder"]


# --- Dtype histogram ---


def test_dtype_histogram_names_and_bytes():
    result = classify({
        "a": ("F8_E4M3", (4, 4)),
        "b": ("F8_E5M2", (2,)),
        "c": ("BF16", (3,)),
        "d": ("F16", (2, 2)),
        "e": ("F32", ()),
        "f": ("I64", (2,)),
        "g": ("U8", (5,)),
        "h": ("F64", (1,)),
        "i": ("BOOL", (3,)),
    })
    assert result.dtypes == {"fp32": 4, "fp16": 8, "bf16": 6, "fp8_e4m3fn": 16, "fp8_e5m2": 2, "int": 21,
                             "other": 11}
    assert list(result.dtypes) == ["fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "int", "other"]
    assert result.parameters == 16 + 2 + 3 + 4 + 1 + 2 + 5 + 1 + 3


def test_reader_byte_size_wins_over_computed_size():
    result = classify({"packed": ("F4", (10,), 5), "scalar": ("F8_E4M3", (), 1)})
    assert result.bytes == 6
    assert result.dtypes == {"fp8_e4m3fn": 1, "other": 5}


@pytest.mark.parametrize("name", ["te_umt5_xxl_fp8_scaled", "te_qwen25_vl_7b_fp8_scaled", "flux1_dev_fp8_checkpoint",
                                  "qwen_image_diffusion_only"])
def test_dtype_histogram_of_fp8_files(name):
    tensors = load(name)["tensors"]
    expected: dict[str, int] = {}
    sizes = {"F8_E4M3": 1, "F16": 2, "BF16": 2, "F32": 4, "U8": 1}
    names = {"F8_E4M3": "fp8_e4m3fn", "F16": "fp16", "BF16": "bf16", "F32": "fp32", "U8": "int"}
    for dtype, shape in tensors.values():
        n = sizes[dtype]
        for d in shape:
            n *= d
        expected[names[dtype]] = expected.get(names[dtype], 0) + n
    result = classify(tensors)
    assert result.dtypes == expected
    assert result.dtypes["fp8_e4m3fn"] > 0
    for component in result.components:
        assert list(component.dtypes) == [k for k in anatomy.DTYPE_ORDER if k in component.dtypes]


def test_scaled_fp8_is_reported():
    assert classify_fixture("te_umt5_xxl_fp8_scaled").components[0].details["scaled_fp8"] is True
    assert "scaled_fp8" not in classify_fixture("te_t5xxl_fp16").components[0].details


# --- What is missing, and how to load it ---

QWEN_ADVICE = [
    # (node, UI title, inputs that must be set)
    ("UNETLoader", "Load Diffusion Model", {"unet_name": "qwen_image_fp8_e4m3fn.safetensors"}),
    ("CLIPLoader", "Load CLIP", {"type": "qwen_image"}),
    ("VAELoader", "Load VAE", {}),
]


@pytest.mark.parametrize("index, node, title, inputs", [(i, *row) for i, row in enumerate(QWEN_ADVICE)])
def test_qwen_image_diffusion_only_advice(index, node, title, inputs):
    result = classify_fixture("qwen_image_diffusion_only")
    steps = result.loading_advice("qwen_image_fp8_e4m3fn.safetensors")
    assert [s.node for s in steps] == [row[0] for row in QWEN_ADVICE]
    step = steps[index]
    assert (step.node, step.title) == (node, title)
    assert inputs.items() <= step.inputs.items()
    assert step.why


def test_qwen_image_diffusion_only_names_its_text_encoder_and_vae():
    result = classify_fixture("qwen_image_diffusion_only")
    assert not result.complete
    missing = {n.role: n for n in result.missing_for_txt2img()}
    assert set(missing) == {"text_encoder", "vae"}
    assert missing["text_encoder"].name == "qwen25_vl_7b"
    assert "qwen_2.5_vl_7b" in missing["text_encoder"].file
    assert missing["vae"].file == "qwen_image_vae.safetensors"
    steps = {s.node: s for s in result.loading_advice()}
    assert "qwen_2.5_vl_7b" in steps["CLIPLoader"].inputs["clip_name"]
    assert steps["VAELoader"].inputs == {"vae_name": "qwen_image_vae.safetensors"}
    assert steps["UNETLoader"].folder == "models/diffusion_models"
    text = result.describe("qwen_image_fp8_e4m3fn.safetensors")
    for word in ("UNETLoader", "CLIPLoader", "type=qwen_image", "VAELoader", "qwen_2.5_vl_7b", "qwen_image_vae"):
        assert word in text


ADVICE = [
    # (fixture, [(node, {inputs that must be set})])
    ("flux1_dev_diffusion_only", [("UNETLoader", {}),
                                  ("DualCLIPLoader", {"clip_name1": "clip_l.safetensors", "type": "flux"}),
                                  ("VAELoader", {"vae_name": "ae.safetensors"})]),
    ("wan21_t2v_14b_diffusion_only", [("UNETLoader", {}), ("CLIPLoader", {"type": "wan"}),
                                      ("VAELoader", {"vae_name": "wan_2.1_vae.safetensors"})]),
    ("wan22_ti2v_5b_diffusion_only", [("UNETLoader", {}), ("CLIPLoader", {"type": "wan"}),
                                      ("VAELoader", {"vae_name": "wan2.2_vae.safetensors"})]),
    ("hunyuan_video_t2v_diffusion_only", [("UNETLoader", {}),
                                          ("DualCLIPLoader", {"type": "hunyuan_video",
                                                              "clip_name2": "llava_llama3_fp8_scaled.safetensors"}),
                                          ("VAELoader", {"vae_name": "hunyuan_video_vae_bf16.safetensors"})]),
    ("ltxv_2b_checkpoint", [("CheckpointLoaderSimple", {}), ("CLIPLoader", {"type": "ltxv"})]),
    ("sd15_checkpoint", [("CheckpointLoaderSimple", {})]),
    ("lumina2_checkpoint", [("CheckpointLoaderSimple", {})]),
    ("vae_wan21", [("VAELoader", {})]),
    ("controlnet_sd15", [("ControlNetLoader", {})]),
    ("lora_sdxl_kohya", [("LoraLoader", {})]),
    ("te_umt5_xxl_fp8_scaled", [("CLIPLoader", {"type": "wan"})]),
    ("te_gemma2_2b", [("CLIPLoader", {"type": "lumina2"})]),
]


@pytest.mark.parametrize("name, expected", ADVICE, ids=[a[0] for a in ADVICE])
def test_loading_advice(name, expected):
    steps = classify_fixture(name).loading_advice("x.safetensors")
    assert [s.node for s in steps] == [node for node, _ in expected]
    for step, (_, inputs) in zip(steps, expected, strict=True):
        assert inputs.items() <= step.inputs.items()
        assert "x.safetensors" in step.inputs.values() or step.node in ("CLIPLoader", "DualCLIPLoader", "VAELoader")


def test_tiny_test_checkpoint_lacks_only_its_text_encoder():
    shapes = {**tiny_unet_shapes(), **tiny_vae_shapes()}
    result = classify({k: ("F16", v) for k, v in shapes.items()})
    assert sorted((c.kind, c.name) for c in result.components) == [("diffusion_model", "sd1"), ("vae", "taesd")]
    assert [(n.role, n.name) for n in result.missing_for_txt2img()] == [("text_encoder", "clip_l")]
    steps = result.loading_advice("tiny.safetensors")
    assert [(s.node, s.inputs) for s in steps] == [
        ("CheckpointLoaderSimple", {"ckpt_name": "tiny.safetensors"}),
        ("CLIPLoader", {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"}),
    ]


def test_sd3_t5_is_optional_and_checkpoint_without_encoders_is_incomplete():
    full = load("sd3_medium_incl_clips_t5xxlfp8")["tensors"]
    assert classify({k: v for k, v in full.items() if "t5xxl" not in k}).complete
    bare = classify({k: v for k, v in full.items() if not k.startswith("text_encoders.")})
    assert [n.name for n in bare.missing_for_txt2img()] == ["clip_l", "clip_g"]


def test_unprefixed_model_next_to_other_parts_is_not_a_checkpoint():
    tensors = {**load("qwen_image_diffusion_only")["tensors"],
               **{"vae." + k: v for k, v in load("vae_wan21")["tensors"].items()},
               **{"text_encoders.qwen25_7b.transformer." + k: v
                  for k, v in load("te_qwen25_vl_7b_fp8_scaled")["tensors"].items()}}
    result = classify(tensors)
    assert result.missing_for_txt2img() == []
    assert result.complete is False  # ComfyUI reads no CLIP or VAE next to an unprefixed model
    assert [s.node for s in result.loading_advice()] == ["UNETLoader"]


# --- The tables agree with each other and with ComfyUI ---


def test_family_needs_refer_to_names_the_rules_produce():
    names = {(r.kind, r.name) for r in RULES}
    for family, needs in FAMILY_NEEDS.items():
        assert ("diffusion_model", family) in names, family
        for part in needs.text_encoders:
            assert ("text_encoder", part.name) in names, part.name
        for vae in (needs.vae.name, *needs.vae_also):
            assert ("vae", vae) in names, vae
        assert needs.clip_type in CLIP_LOADER_TYPES[needs.clip_loader], family
        assert needs.vae_loader in anatomy.NODES and needs.clip_loader in anatomy.NODES
        assert needs.why.endswith(".") and "\n" not in needs.why


def test_rules_are_well_formed():
    for rule in RULES:
        assert rule.kind in anatomy.KINDS
        assert rule.keys, rule.name
        for predicate in rule.shapes:
            assert predicate.values and (predicate.axis == "rank" or isinstance(predicate.axis, int))
        for f in rule.facts:
            assert f.axis in ("count", "present") or isinstance(f.axis, int)
