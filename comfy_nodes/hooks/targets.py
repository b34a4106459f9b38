"""Every ComfyUI function StageTrace hooks, in one table, and whether a given ComfyUI still fits it.

A hook binds the parameters it reads **by name** (``Binder``), never by position or count: ComfyUI adds
parameters between versions (``execution.execute`` gained ``ui_outputs`` and ``asset_manager``,
``VAE.encode`` gained ``not_video``...) and a hook that counted arguments broke. So a target *fits*
when it exists and still has a parameter of every name its hook reads; anything else about its
signature may change. When it does not fit, the installer leaves it alone and StageTrace does what
the table's ``fallback`` says instead (one log line per fallback, and the trace metadata names it).

The same decision is made three ways, from the same table:

- ``fit_live()``: from the live objects of the ComfyUI in this process (``inspect``), for the installer;
- ``fit_source(comfyui_dir)``: from ComfyUI's source files (``ast``), without importing ComfyUI, for
  ``stagetrace doctor`` and for the signature fixtures (``tests/fixtures/signatures/``);
- ``fit_params(params)``: from parameter names only (a fixture), for the tests.

Parameter lists are written the way Python spells a signature: ``*args`` and ``**kwargs`` keep their
stars, everything else is a plain name.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
from dataclasses import asdict, dataclass, field

HOOK = "hook"  # StageTrace replaces the target
CALLED = "called"  # StageTrace (its demo harness) calls the target by keyword
WATCHED = "watched"  # StageTrace neither hooks nor calls it: recorded to follow ComfyUI's drift


@dataclass(frozen=True)
class Target:
    """One function or method of ComfyUI that StageTrace depends on."""

    module: str  # "comfy.sd"
    qualname: str  # "VAE.decode", or "execute" for a module function
    binds: tuple[str, ...]  # the parameters the hook reads by name: all must exist for it to fit
    fallback: str | None  # what StageTrace does instead when it does not fit, in plain words
    label: str = ""  # the name in the trace's otherData.hooks (default: the target's name)
    kind: str = HOOK
    optional: tuple[str, ...] = ()  # read by name when present; their absence only loses a detail
    absent: str | None = None  # for a target only some ComfyUI versions have: why its absence is fine

    @property
    def name(self) -> str:
        return f"{self.module}.{self.qualname}"

    @property
    def hook_label(self) -> str:
        return self.label or self.name


@dataclass
class TargetFit:
    """Whether one target fits, and why not."""

    target: str  # "execution.execute", "comfy.sd.VAE.decode", ...
    found: bool
    params: list[str] = field(default_factory=list)  # its parameter names, [] when not found
    fits: bool = False
    fallback: str | None = None  # what StageTrace does instead when it does not fit
    why: str = ""  # why it does not fit, or why its absence does not matter; "" when it fits

    def to_dict(self) -> dict:
        return asdict(self)


_NODES_FALLBACK = ("nodes are timed through ComfyUI's progress handler (execution.reset_progress_state): each "
                   "node's start and finish, without its outcome detail or pending time")

TARGETS: tuple[Target, ...] = (
    # node and prompt timing (install.py)
    Target("execution", "execute", ("dynprompt", "current_item"), _NODES_FALLBACK),
    Target("execution", "PromptExecutor.execute_async", ("self", "prompt", "prompt_id"),
           "no trace is written: prompts are not profiled", label="PromptExecutor.execute_async",
           optional=("extra_data",)),
    Target("execution", "PromptExecutor.add_message", ("event", "data"),
           "cached nodes and the prompt's events (start, success, error, interrupt) are not recorded",
           label="PromptExecutor.add_message"),
    Target("execution", "PromptQueue.put", ("item",),
           "the queue wait comes from the prompt's create_time where ComfyUI stamps it, else it is not measured",
           label="PromptQueue.put"),
    Target("execution", "reset_progress_state", (),
           "no node timing at all when execution.execute does not fit either"),
    # stages inside the nodes (stage_hooks.py)
    Target("comfy.utils", "load_torch_file", ("ckpt",), "no model_load.read spans and no model file anatomy"),
    Target("comfy.sd", "load_state_dict_guess_config", (), "no model_load.build spans for checkpoints"),
    Target("comfy.sd", "load_diffusion_model_state_dict", (), "no model_load.build spans for diffusion models"),
    Target("comfy.sd", "load_text_encoder_state_dicts", (), "no model_load.build spans for text encoders"),
    Target("comfy.model_management", "load_models_gpu", ("models",),
           "no model_load.to_device spans (loaded vs total bytes)"),
    Target("comfy.sd", "CLIP.encode_from_tokens", ("self", "tokens"), "no text_encode spans from encode_from_tokens"),
    Target("comfy.sd", "CLIP.encode_from_tokens_scheduled", ("self", "tokens"),
           "no text_encode spans from encode_from_tokens_scheduled"),
    Target("comfy.samplers", "KSAMPLER.sample", ("self", "sigmas", "callback"), "no sample or sample.step spans"),
    Target("comfy.sd", "VAE.decode", ("self", "samples_in"), "no vae_decode spans"),
    Target("comfy.sd", "VAE.encode", ("self", "pixel_samples"), "no vae_encode spans"),
    *(Target("comfy.sd", f"VAE.{fn}", ("self",), f"a tiled {fn[:6]} after running out of memory is not flagged")
      for fn in ("decode_tiled_", "decode_tiled_1d", "decode_tiled_3d", "encode_tiled_", "encode_tiled_1d",
                 "encode_tiled_3d")),
    Target("nodes", "SaveImage.save_images", ("self", "images"), "no save spans"),
    Target("comfy.memory_management", "read_tensor_file_slice_into", ("tensor",),
           "reads of mapped model files are measured by storage bytes and time waiting for I/O, not timed one "
           "by one", absent="this ComfyUI has no comfy-aimdo read path: model files are read when loaded, or "
           "paged in from a mapping (measured by storage bytes)"),
    # what StageTrace calls (comfy_nodes/demo/harness.py builds an executor with these keywords)
    Target("execution", "PromptExecutor.__init__", ("server", "cache_type"),
           "the built-in example cannot build ComfyUI's executor", kind=CALLED),
    # watched: the signatures newer ComfyUI changed, none of which StageTrace hooks or calls
    *(Target(module, qualname, (), None, kind=WATCHED, absent="StageTrace neither hooks nor calls it")
      for module, qualname in (("server", "PromptServer.__init__"), ("comfy.samplers", "CFGGuider.outer_sample"),
                               ("comfy.samplers", "CFGGuider.inner_sample"), ("comfy.sd", "VAE.encode_tiled"),
                               ("comfy.sd", "VAE.decode_tiled"))),
)

BY_NAME = {t.name: t for t in TARGETS}


def target(name: str) -> Target:
    """The table's entry for "comfy.sd.VAE.decode"; KeyError for a name not in it."""
    return BY_NAME[name]


# --- Deciding -------------------------------------------------------------------------------------


def fit_one(t: Target, params: list[str] | None, why_missing: str | None = None) -> TargetFit:
    """Whether t fits a target with these parameter names (None: the target was not found)."""
    if params is None:
        why = why_missing or f"{t.qualname} not found in {t.module}"
        if t.absent is not None:  # only newer ComfyUI has it: nothing is missing
            return TargetFit(t.name, False, [], True, None, t.absent)
        return TargetFit(t.name, False, [], False, t.fallback, why)
    named = {p for p in params if not p.startswith("*")}
    missing = [b for b in t.binds if b not in named]
    if missing:
        why = (f"has no parameter named {', '.join(repr(m) for m in missing)} "
               f"(its parameters: {', '.join(params) or 'none'})")
        return TargetFit(t.name, True, list(params), False, t.fallback, why)
    return TargetFit(t.name, True, list(params), True, None, "")


def fit_params(params: dict[str, list[str] | None]) -> list[TargetFit]:
    """Every target of the table against {target name: parameter names, or None when absent}; a
    target the dict does not mention counts as not found."""
    return [fit_one(t, params.get(t.name)) for t in TARGETS]


# --- Reading the live objects ---------------------------------------------------------------------


def signature_names(func) -> list[str] | None:
    """The parameter names of a callable as a signature spells them ("*args", "**kwargs"), or None
    when it has no signature Python can read."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    out = []
    for p in sig.parameters.values():
        prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        out.append(prefix + p.name)
    return out


def live_object(t: Target, modules=None):
    """(the live object t names, why it is missing or None). A method is read from its own class's
    __dict__ (what the installer replaces), never inherited."""
    modules = sys.modules if modules is None else modules
    module = modules.get(t.module)
    if module is None:
        return None, f"module {t.module} is not imported"
    owner, *rest = t.qualname.split(".")
    obj = getattr(module, owner, None)
    if obj is None:
        return None, f"{owner} not found in {t.module}"
    for part in rest:
        obj = getattr(obj, "__dict__", {}).get(part)
        if obj is None:
            return None, f"{t.qualname} not found in {t.module}"
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    return obj, None


def fit_live(modules=None) -> list[TargetFit]:
    """Every target of the table against the ComfyUI imported in this process."""
    out = []
    for t in TARGETS:
        obj, why = live_object(t, modules)
        if obj is None:
            out.append(fit_one(t, None, why))
            continue
        names = signature_names(obj)
        out.append(fit_one(t, names, None if names is not None else f"{t.name} has no readable signature"))
    return out


# --- Reading the source ---------------------------------------------------------------------------


def _ast_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    out = [p.arg for p in (*a.posonlyargs, *a.args)]
    if a.vararg is not None:
        out.append("*" + a.vararg.arg)
    out += [p.arg for p in a.kwonlyargs]
    if a.kwarg is not None:
        out.append("**" + a.kwarg.arg)
    return out


def _find_def(body: list[ast.stmt], path: list[str]):
    """The def at path (["VAE", "decode"]) among body's top-level statements; the last one wins, as
    it would at import. None when absent."""
    head, rest = path[0], path[1:]
    found = None
    for node in body:
        if rest and isinstance(node, ast.ClassDef) and node.name == head:
            found = _find_def(node.body, rest) or found
        elif not rest and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == head:
            found = node
    return found


def module_file(comfyui_dir: str, module: str) -> str:
    """comfy.sd -> <dir>/comfy/sd.py (a package gives its __init__.py)."""
    base = os.path.join(comfyui_dir, *module.split("."))
    return base + ".py" if not os.path.isdir(base) else os.path.join(base, "__init__.py")


def _imported_from(body: list[ast.stmt], name: str) -> str | None:
    """The absolute module a top-level ``from M import name`` brings name from, or None."""
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if any((a.asname or a.name) == name and a.name == name for a in node.names):
                return node.module
    return None


def source_params(comfyui_dir: str) -> dict[str, list[str] | None]:
    """{target name: parameter names, or None when its source has no such def}, read with ast without
    importing ComfyUI. A module function imported from another of ComfyUI's modules
    (``from comfy_execution.progress import reset_progress_state``) is read where it is defined.
    Raises OSError or SyntaxError naming the file when a file cannot be read."""
    trees: dict[str, ast.Module | None] = {}

    def tree_of(module: str) -> ast.Module | None:
        if module not in trees:
            path = module_file(comfyui_dir, module)
            if not os.path.isfile(path):
                trees[module] = None
            else:
                with open(path, "rb") as f:
                    trees[module] = ast.parse(f.read(), filename=path)
        return trees[module]

    out: dict[str, list[str] | None] = {}
    for t in TARGETS:
        module, path, fn = t.module, t.qualname.split("."), None
        for _ in range(4):  # a few re-exports at most
            tree = tree_of(module)
            if tree is None:
                break
            fn = _find_def(tree.body, path)
            source = _imported_from(tree.body, path[0]) if fn is None and len(path) == 1 else None
            if fn is not None or source is None:
                break
            module = source
        out[t.name] = _ast_params(fn) if fn is not None else None
    return out


def fit_source(comfyui_dir: str) -> list[TargetFit]:
    """Every target of the table against the ComfyUI source in comfyui_dir (not imported)."""
    params = source_params(comfyui_dir)
    out = []
    for t in TARGETS:
        why = None
        if params[t.name] is None and not os.path.isfile(module_file(comfyui_dir, t.module)):
            why = f"{module_file(comfyui_dir, t.module)} does not exist"
        out.append(fit_one(t, params[t.name], why))
    return out


# --- Binding by name ------------------------------------------------------------------------------

_MISSING = object()


class Binder:
    """Reads a call's arguments by parameter name, whatever their position: built once per target from
    its signature (a cached table of positions, keyword names and defaults), then a few list and dict
    look-ups per call, much cheaper than inspect.Signature.bind."""

    __slots__ = ("names", "_position", "_keyword", "_default")

    def __init__(self, func, names: tuple[str, ...] | list[str]):
        sig = inspect.signature(func)
        self.names = tuple(names)
        self._position: dict[str, int] = {}
        self._keyword: dict[str, bool] = {}
        self._default: dict[str, object] = {}
        positional = 0
        for p in sig.parameters.values():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                self._position[p.name] = positional
                positional += 1
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                self._keyword[p.name] = True
            if p.default is not p.empty:
                self._default[p.name] = p.default
        missing = [n for n in self.names if n not in self._position and n not in self._keyword]
        if missing:
            raise TypeError(f"{getattr(func, '__qualname__', func)} has no parameter named {', '.join(missing)}")

    def get(self, args: tuple, kwargs: dict, name: str, default=None):
        """The value passed for name (or its default in the signature, else default)."""
        if name in kwargs and name in self._keyword:
            return kwargs[name]
        i = self._position.get(name)
        if i is not None and i < len(args):
            return args[i]
        return self._default.get(name, default)

    def values(self, args: tuple, kwargs: dict) -> dict:
        """{name: value} for every name the binder was built for."""
        return {n: self.get(args, kwargs, n) for n in self.names}

    def replace(self, args: tuple, kwargs: dict, name: str, value) -> tuple[tuple, dict]:
        """(args, kwargs) with name's value replaced, where the caller passed it, or added as a keyword."""
        i = self._position.get(name)
        if i is not None and i < len(args) and not (name in kwargs and name in self._keyword):
            return args[:i] + (value,) + args[i + 1:], kwargs
        if name in self._keyword:
            return args, {**kwargs, name: value}
        if i is not None and i == len(args):  # positional-only, not passed: append it
            return args + (value,), kwargs
        raise TypeError(f"cannot pass {name} to this call")


def binder(func, t: Target) -> Binder:
    """The Binder of t's names (binds and the optional ones func has) for func."""
    have = set(signature_names(func) or ())
    return Binder(func, t.binds + tuple(n for n in t.optional if n in have))
