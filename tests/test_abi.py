"""The built extension's shape: a stable-ABI (abi3) file when built against the
limited API, and an import that is clean under python -X dev -W error."""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_file_name_matches_the_api_it_was_built_against(native):
    name = os.path.basename(native.__file__)
    if native.LIMITED_API == 1:
        assert name == "_native.abi3.so"
    else:
        assert name == "_native" + sysconfig.get_config_var("EXT_SUFFIX")


# Imports the module and touches each type once, in dev mode with every warning an error.
DEV_MODE_SCRIPT = textwrap.dedent("""
    import asyncio, gc, os, sys, tempfile
    from comfy_nodes import _native as n
    w = n.Wrapper(lambda x: x, n.STAGES.index("node"), "f", detail="1")
    assert w(3) == 3
    async def c():
        return 4
    assert asyncio.run(n.Wrapper(c, 0, "c", coroutine=True)()) == 4
    with tempfile.TemporaryDirectory() as d:
        t = n.TraceWriter(os.path.join(d, "t.trace.json"))
        t.write_batch(n.drain())
        t.commit()
        with n.TraceWriter(os.path.join(d, "u.trace.json")):
            pass
    assert n.json_escape(b"\\xff") == '"\\ufffd"'
    del w, t
    gc.collect()
    print("clean", n.LIMITED_API)
""")


def test_imports_cleanly_in_dev_mode_with_warnings_as_errors(native):
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", DEV_MODE_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not even an "Exception ignored in ..." warning
    assert done.stdout.split() == ["clean", str(native.LIMITED_API)]


# --- Types Python must not create ------------------------------------------------------------

# Each type the module exports, created every way Python allows (T(), T.__new__(T)) and, where that
# worked, used (len, iter, repr, str, bool, indexing). Types that only C may create must refuse with
# TypeError; the others must work. Run in a child process: a crash is a non-zero exit, not a dead test run.
INSTANTIATION_SCRIPT = textwrap.dedent("""
    import json
    from comfy_nodes import _native as n
    outcome = {}
    for name in sorted(dir(n)):
        T = getattr(n, name)
        if not isinstance(T, type):
            continue
        results = []
        for make in (lambda: T(), lambda: T.__new__(T)):
            try:
                obj = make()
            except TypeError:
                results.append("TypeError")
                continue
            for use in (len, iter, repr, str, bool, lambda o: o[0], lambda o: list(o)):
                try:
                    use(obj)
                except Exception:
                    pass
            results.append("created")
        outcome[name] = results
    print(json.dumps(outcome))
""")

# What T() and T.__new__(T) give for each exported type: the types only C creates refuse both.
EXPECTED_INSTANTIATION = {
    "EventBatch": ["TypeError", "TypeError"],
    "GroupKeys": ["TypeError", "TypeError"],
    "HeaderHold": ["TypeError", "TypeError"],
    "SpanAwait": ["TypeError", "TypeError"],
    "SafetensorsError": ["created", "created"],  # an exception: constructible, documented
    "TraceWriter": ["TypeError", "TypeError"],  # path is required
    "Wrapper": ["TypeError", "TypeError"],  # func, stage, name are required
}


def run_child(script):
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_group_keys_cannot_be_created_from_python(native):
    # This sequence used to dereference a NULL header hold: exit 139 (SIGSEGV).
    done = run_child("from comfy_nodes import _native as n\ntry:\n    len(n.GroupKeys())\n"
                     "except TypeError as e:\n    print('refused:', e)\n")
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.startswith("refused: cannot create")


def test_every_exported_type_is_created_as_documented_or_refused(native):
    done = run_child(INSTANTIATION_SCRIPT)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert json.loads(done.stdout) == EXPECTED_INSTANTIATION
