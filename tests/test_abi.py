"""The built extension's shape: a stable-ABI (abi3) file when built against the
limited API, and an import that is clean under python -X dev -W error."""

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
