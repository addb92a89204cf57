#!/usr/bin/env bash
# The README's pictures, made by the CLI from the shipped models and a committed training log:
#   bash docs/pictures/make.sh        (from anywhere; needs FSDD for the audio evaluation picture)
set -euo pipefail
cd "$(dirname "$0")/../.."
PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=docs/pictures

sciffusion sample molecules -n 15 --out "$work/mol" --no-progress
sciffusion evaluate molecules "$work/mol" > /dev/null
cp "$work/mol/grid.png" "$out/molecules_grid.png"
cp "$work/mol/evaluation/bond_lengths.png" "$out/molecules_bond_lengths.png"

sciffusion sample audio -n 8 --out "$work/audio" --no-progress sample.label=7
sciffusion evaluate audio "$work/audio" > /dev/null
cp "$work/audio/grid.png" "$out/audio_grid.png"
cp "$work/audio/evaluation/per_class_accuracy.png" "$out/audio_per_class_accuracy.png"

sciffusion sample images -n 64 --out "$work/img" --no-progress
cp "$work/img/grid.png" "$out/images_grid.png"

# the shipped QM9 model's training log, drawn as training draws it at every checkpoint
mkdir "$work/qm9-run"
cp domains/molecules/runs/qm9/log.jsonl "$work/qm9-run/"
python -c "from sciffusion.core.pictures import training_pictures; training_pictures('$work/qm9-run', 'molecules: qm9')"
cp "$work/qm9-run/loss.png" "$out/molecules_loss.png"
ls -l "$out"
