#!/usr/bin/env bash
# Set up a fresh machine: the system tools the audio pipeline uses, then a virtualenv with
# multidiff, its test tools and the peers it is compared with. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# espeak-ng speaks the offline speech corpus (data_prep/espeak_corpus.py) and the audio tests;
# chromium + chromium-driver run `multidiff app` in a headless browser (tests/test_app_browser.py, offline)
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
# constraints.txt pins the torch trio that installs from local disk here (no multi-GB download)
pip install -q -c constraints.txt -e ".[dev,bench,app]"
python -c "import torch, torchvision, torchaudio; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'torchaudio', torchaudio.__version__)"
