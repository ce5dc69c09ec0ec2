#!/usr/bin/env bash
# Every benchmark, in order, each resuming where the last run stopped: trained models resume
# from their checkpoints and settings already recorded are skipped. Safe to interrupt and
# re-run; a 2-core machine needs several hours per part (see BENCHMARKS.md for what exists).
#
#   bash benchmarks/run_all.sh            # everything
#   bash benchmarks/run_all.sh plugins    # one part: teachers plugins factorize slim steps retime
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE  # idle BLAS threads must not spin against a second job
py=.venv/bin/python
parts=("${@:-teachers plugins factorize slim steps retime}")
for part in ${parts[@]}; do
  case "$part" in
    teachers)  "$py" benchmarks/teachers.py --tasks sst2 mrpc rte stsb cola conll2003 --train-only ;;
    plugins)   "$py" benchmarks/plugins.py --resume --threads 1 --no-variants \
                 --tasks cola sst2 mrpc stsb rte conll2003
               "$py" benchmarks/plugins.py --resume --threads 1 --variants --tasks sst2
               "$py" benchmarks/plugins.py --resume --threads 1 --variants --variant-kinds cls \
                 --tasks mrpc stsb rte cola
               "$py" benchmarks/plugin_profile.py ;;
               # then, with nothing else running: benchmarks/plugins.py --retime --threads 1
    factorize) "$py" benchmarks/factorize.py --resume --threads 1 --work-threads 1 \
                 --latency-repeats 10 --measure-texts 128 --with-finetune \
                 --tasks rte mrpc stsb cola sst2 ;;
    slim)      "$py" benchmarks/slim.py --tasks sst2 --ablation
               "$py" benchmarks/slim.py --tasks mrpc rte stsb cola ;;
    steps)     "$py" benchmarks/steps.py init
               "$py" benchmarks/steps.py encoders --tasks sst2 --train-limit 16000
               "$py" benchmarks/steps.py encoders --tasks mrpc rte stsb cola
               "$py" benchmarks/steps.py fidelity
               "$py" benchmarks/steps.py decoders
               # then, with nothing else running:
               "$py" benchmarks/steps.py latency --tasks sst2 --latency-repeats 50 ;;
    retime)    # the one timing protocol, with nothing else running: every benchmark's rows
               # from their saved models where kept, else on same-shape stand-ins
               for b in factorize steps slim plugins; do
                 "$py" benchmarks/retime.py "$b" --tasks sst2 mrpc stsb cola rte --stand-in \
                   --warmup 3 --repeats 10 --rounds 3
               done
               "$py" benchmarks/stand_in_check.py --tasks sst2 mrpc stsb ;;
    *) echo "unknown part $part (teachers plugins factorize slim steps retime)" >&2; exit 2 ;;
  esac
done
"$py" benchmarks/report.py
