# Thin wrapper over CMake for the everyday commands. See README.md.
BUILD      ?= build
TEST_BUILD ?= build-test
JOBS       ?= $(shell nproc)
LISTEN     ?= 127.0.0.1:8080
DATA_DIR   ?= data

.PHONY: all deps build run test bench bench-quick clean format

all: build

deps:
	./scripts/deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

run: build
	./scripts/run.sh $(BUILD)/bin $(LISTEN) $(DATA_DIR)

test: deps
	cmake -S . -B $(TEST_BUILD) -DCMAKE_BUILD_TYPE=Debug -DLEDGER_SANITIZE=ON >/dev/null
	cmake --build $(TEST_BUILD) -j $(JOBS)
	./scripts/test.sh $(TEST_BUILD) $(JOBS)

bench: build
	./bench/run.sh $(BUILD)/bin full

bench-quick: build
	./bench/run.sh $(BUILD)/bin quick

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(TEST_BUILD)
