# Thin wrapper over CMake. `make demo` and `make test` are the README's two commands.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all setup build demo test test-asan bench clean format

all: build

setup:
	@scripts/setup.sh

$(BUILD)/CMakeCache.txt: | setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null

build: setup $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/mxmoe demo

# All tests, then the format and loader tests again under ASan/UBSan.
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(MAKE) --no-print-directory test-asan

test-asan: setup
	@[ -f $(ASAN_BUILD)/CMakeCache.txt ] || cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMXM_SANITIZE=ON -DMXM_CUDA=OFF >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j $(JOBS) -R '$(ASAN_TESTS)'

ASAN_TESTS ?= ^(test_formats|test_safetensors|test_route|test_moe|test_moe_errors|test_checkpoint|test_ckpt_quantize|test_cpu_kernels|test_api_misuse|cli_misuse)$$

bench: build
	$(BUILD)/bench_quant

# .clang-format on the lines changed since the merge base with main (what `make test` checks);
# never whole files: the tree predates the check.
format:
	scripts/check-format.sh --fix

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
