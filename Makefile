# Everyday commands. `make test` is the README's test command.
PYTHON ?= python3

.PHONY: build test bench lint format sanitize valgrind clean

build:
	$(PYTHON) setup.py build_ext --inplace

test: build
	$(PYTHON) -m pytest tests -q

bench: build
	$(PYTHON) benchmarks/bench_core.py

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
	    $(PYTHON) -m pytest tests/test_native_core.py -q
	$(PYTHON) setup.py build_ext --inplace --force

valgrind: build
	PYTHONMALLOC=malloc valgrind --error-exitcode=1 --leak-check=no -q \
	    $(PYTHON) -m pytest tests/test_native_core.py -q -p no:cacheprovider

clean:
	rm -rf build comfy_nodes/*.so
