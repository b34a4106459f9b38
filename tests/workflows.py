"""Workflows the client tests share."""


def seed_workflow() -> dict:
    """The workflow of the team StageTrace is for, as its script had it: a node class ComfyUI does not have,
    and a checkpoint path that was an estimate (a diffusers diffusion-model file) in CheckpointLoaderSimple
    feeding CLIPTextEncode and VAEDecode."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "Qwen-Image-Edit-2509-FP8/diffusion_pytorch_model.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "QwenT2IWrapper", "inputs": {"model": ["1", 0], "positive": ["2", 0], "seed": 42}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "qwen"}},
    }
