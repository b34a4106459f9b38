# Everyday commands. `make test` is the README's test command.
PYTHON ?= python3

.PHONY: build test bench lint format sanitize valgrind fuzz clean

build:
	$(PYTHON) setup.py build_ext --inplace

test: build
	$(PYTHON) -m pytest tests -q

bench: build
	$(PYTHON) benchmarks/bench_core.py
	$(PYTHON) benchmarks/bench_safetensors.py
	$(PYTHON) benchmarks/bench_gpu.py
	$(PYTHON) benchmarks/bench_report.py

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

# The native tests under AddressSanitizer/UBSan (a separate in-place build).
sanitize:
	CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" LDFLAGS="-fsanitize=address,undefined" \
	    $(PYTHON) setup.py build_ext --inplace --force
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
	    $(PYTHON) -m pytest tests/test_native_core.py tests/test_native_args.py tests/test_safetensors_reader.py tests/test_anatomy_groups.py tests/test_gpu.py -q
	$(PYTHON) setup.py build_ext --inplace --force

# The native tests under valgrind (the real interpreter, not a pyenv shim
# script, so valgrind traces Python itself). CPython's own reports (its
# vectorised string compares, getrandom buffers) are noise here: the target
# fails when a report has a frame in StageTrace's C files.
valgrind: build
	mkdir -p build
	PYTHONMALLOC=malloc valgrind --leak-check=no --num-callers=30 --log-file=build/valgrind.log \
	    $$($(PYTHON) -c 'import sys; print(sys.executable)') -m pytest tests/test_native_core.py tests/test_native_args.py -q -p no:cacheprovider
	@if grep -E "\((module|bind_[a-z]+|st_[a-z]+)\.c:[0-9]+\)" build/valgrind.log; then \
	    echo "valgrind: errors in StageTrace code (build/valgrind.log)"; exit 1; \
	else echo "valgrind: no errors in StageTrace code"; fi

clean:
	rm -rf build comfy_nodes/*.so
