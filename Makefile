# make setup : .venv with the pinned CPU stack (re-runs only when setup.cfg, setup.py or the constraints
#              change), .venv-tf457 with the newer stack and .venv-tf5 with transformers 5
#              (each re-runs only when its script changes)
# make demo  : a tiny LLaVA learns a visual task on the CPU: copy-cfg, train, chat, eval, export
# make test  : the test suite (end-to-end xtuner training included)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
# Second environment, the newer stack: transformers 4.57 and bitsandbytes 0.50, which
# quantizes nf4 on a CPU. The 4-bit QLoRA tests train in it and the export tests load the
# Hugging Face export with it (they skip, with the reason, where it is absent).
TF457  := .venv-tf457/.setup-done
# Third environment: transformers 5 and a CPU torch, nothing else (xtuner 0.2.0 does not
# import on transformers 5); the export tests load the `hf` export with it.
TF5    := .venv-tf5/.setup-done
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_CONSTRAINT := $(CURDIR)/requirements/constraints-cpu.txt
export DS_BUILD_OPS := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test clean

setup: $(STAMP) $(TF457) $(TF5)

# With a CPU torch, torchvision goes: the registry's only torchvision for torch 2.13 is a
# CUDA build that breaks transformers' CLIP image processor (compat stands in for the one
# xtuner module that imports it). install-startup makes `xtuner train`, a new python
# process, apply the compatibility patches.
$(STAMP): setup.cfg setup.py pyproject.toml requirements/constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[deepspeed,test]'
	$(PY) -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' && $(PY) -m pip uninstall -y -q torchvision || true
	$(PY) -m xtuner_llava_swap install-startup
	touch $@

demo: setup
	$(PY) tools/demo.py

$(TF457): tests/export/make_tf457_venv.sh
	PYTHON=$(PYTHON) bash tests/export/make_tf457_venv.sh .venv-tf457
	touch $@

$(TF5): tests/export/make_tf5_venv.sh requirements/constraints-cpu.txt
	PYTHON=$(PYTHON) bash tests/export/make_tf5_venv.sh .venv-tf5
	touch $@

test: setup
	$(PY) -m pytest tests -p no:cacheprovider

clean:
	rm -rf $(VENV) .venv-tf457 .venv-tf5 work_dirs demo_output
