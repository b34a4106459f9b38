# Everyday commands. `make test` is the README's test command: it installs what the tests need into
# $(PYTHON), builds the extension, finds a ComfyUI, runs the tests and ruff (tests/run.py).
PYTHON ?= python3
# extra pytest arguments, e.g. make test PYTEST_ARGS="-k demo -x"
PYTEST_ARGS ?=

.PHONY: build test bench lint format sanitize tsan valgrind fuzz clean

build:
	$(PYTHON) setup.py build_ext --inplace

test:
	$(PYTHON) tests/run.py $(PYTEST_ARGS)

bench: build
	$(PYTHON) benchmarks/bench_core.py
	$(PYTHON) benchmarks/bench_safetensors.py
	$(PYTHON) benchmarks/bench_models_dir.py
	$(PYTHON) benchmarks/bench_gpu.py
	$(PYTHON) benchmarks/bench_report.py
	$(PYTHON) benchmarks/bench_bigtrace.py
	$(PYTHON) benchmarks/bench_spans.py
	$(PYTHON) benchmarks/bench_nodes.py
	$(PYTHON) benchmarks/bench_prompt.py
	$(PYTHON) benchmarks/bench_routes.py
	$(PYTHON) benchmarks/bench_load.py
	$(PYTHON) benchmarks/bench_metrics.py
	$(PYTHON) benchmarks/bench_history.py

# The libFuzzer target under ASan/UBSan for FUZZ_SECONDS (the tests run it for 20 s).
FUZZ_SECONDS ?= 300
fuzz:
	STAGETRACE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTHON) -m pytest tests/test_fuzz.py -q

lint:
	$(PYTHON) -m ruff check .
	clang-format --dry-run --Werror csrc/*.c csrc/*.h

format:
	$(PYTHON) -m ruff format comfy_nodes tests benchmarks
	clang-format -i csrc/*.c csrc/*.h

# The native tests under AddressSanitizer/UBSan (a separate in-place build), then the C stress
# program (tests/native_stress.c: 8 threads, drains, NVTX toggles, fork) built with ASan+UBSan.
# STRESS_SECONDS sets the stress run's length.
STRESS_SECONDS ?= 5
sanitize:
	CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" LDFLAGS="-fsanitize=address,undefined" \
	    $(PYTHON) setup.py build_ext --inplace --force
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
	    $(PYTHON) -m pytest tests/test_native_core.py tests/test_native_args.py tests/test_safetensors_reader.py tests/test_anatomy_groups.py tests/test_gpu.py -q
	$(PYTHON) setup.py build_ext --inplace --force
	STAGETRACE_STRESS_SECONDS=$(STRESS_SECONDS) $(PYTHON) -m pytest tests/test_native_stress.py -q -k asan

# The C stress program under ThreadSanitizer: no report at all may come from StageTrace's code
# (there are no suppressions).
tsan:
	STAGETRACE_STRESS_SECONDS=$(STRESS_SECONDS) $(PYTHON) -m pytest tests/test_native_stress.py -q -k tsan

# The native tests under valgrind (the real interpreter, not a pyenv shim
# script, so valgrind traces Python itself). CPython's own reports (its
# vectorised string compares, getrandom buffers, json.loads' small ints) are
# noise here, even when StageTrace called into CPython further down the stack:
# the target fails when a report's innermost function is in StageTrace's C
# files (inlined code included), or is a libc mem/str function they called.
define VALGRIND_OWN_ERRORS
import re, sys
own = re.compile(r"\((module|bind_[a-z]+|st_[a-z]+)\.c:[0-9]+\)")
frame = re.compile(r"(?:at|by) (0x[0-9A-F]+): (\S+)")
bad = []
for report in re.split(r"\n==[0-9]+== \n", open("build/valgrind.log").read()):
    groups = []  # frames by address: a function and what was inlined into it
    for line in report.splitlines():
        m = frame.search(line)
        if m and groups and groups[-1][0] == m.group(1):
            groups[-1][1].append(line)
        elif m:
            groups.append((m.group(1), [line]))
    if not groups:
        continue
    inner = " ".join(groups[0][1])
    called = len(groups) > 1 and re.search(r": _*(mem|str)[a-z_]*", inner) and own.search(" ".join(groups[1][1]))
    if own.search(inner) or called:
        bad.append(report)
print("\n\n".join(bad))
sys.exit(1 if bad else 0)
endef
export VALGRIND_OWN_ERRORS

valgrind: build
	mkdir -p build
	PYTHONMALLOC=malloc valgrind --leak-check=no --num-callers=30 --log-file=build/valgrind.log \
	    $$($(PYTHON) -c 'import sys; print(sys.executable)') -m pytest tests/test_native_core.py tests/test_native_args.py -q -p no:cacheprovider
	@if $(PYTHON) -c "$$VALGRIND_OWN_ERRORS"; then echo "valgrind: no errors in StageTrace code"; \
	else echo "valgrind: errors in StageTrace code (build/valgrind.log)"; exit 1; fi

clean:
	rm -rf build comfy_nodes/*.so
