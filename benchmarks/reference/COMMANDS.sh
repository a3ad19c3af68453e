#!/usr/bin/env bash
# The authors' reference code and ccl side by side on the CPU at the same
# budget; every set of both sides scored by the same `ccl evaluate --epochs 300 --networks 3`.
# Each command line below is self-contained (it can go into the queue as it is, or run this
# file whole); sets, logs, .eval.log and .eval.json go to $REF_DIR/out/.
# Budget knobs (environment; the defaults in ${...:-N} apply otherwise), the same on both sides:
#   DD_ITERS     DataDAM iterations (default 200; the reference gets --Iteration DD_ITERS-1,
#                its loop runs Iteration+1 updates)
#   PAD_EXPERTS  experts, each 4 epochs (default 2)
#   PAD_ITERS    PAD matching iterations (default 20; the reference's Iteration is PAD_ITERS-1)
# Expected times on the 2 cores, alone (README.md: how they were estimated; PAD's are rough):
#   DataDAM at 200 (the queue's runs): ref 5.7 min (IPC 1) / 7.5 min (IPC 10), ccl ~3.5 / ~6 min; evaluation ~2 / ~7 min
#   PAD ref experts ~35 min an expert, ccl scoring+experts ~10 + ~15 min an expert,
#   matching ~2 min (ref) / ~2.5 min (ccl) an iteration (+ ~7 min each evaluation)
# Run setup.sh first (the same REF_DIR, PY and CCL_DATA_DIR).
set -e
REF_DIR=${REF_DIR:-/tmp/ccl-reference}
PY=${PY:-python}
: "${CCL_DATA_DIR:?the folder holding cifar10/}"
export REF_DATA_DIR=$CCL_DATA_DIR

# --- DataDAM IPC 1: reference, then ccl, from the same Initial_Synthetic_Dataset images ---
cd $REF_DIR/datadam/Initial_Synthetic_Dataset && PYTHONPATH=$REF_DIR/shim:$REF_DIR/site $PY ../main_DataDAM.py --dataset CIFAR10 --model ConvNet --ipc 1 --init smart --Iteration $((${DD_ITERS:-200} - 1)) --num_eval 0 --eval_mode S --data_path $CCL_DATA_DIR --save_path $REF_DIR/out/datadam-save --out $REF_DIR/out/ref-datadam-ipc1.pt > $REF_DIR/out/ref-datadam-ipc1.log 2>&1 && $PY -m ccl.cli evaluate $REF_DIR/out/ref-datadam-ipc1.pt --epochs 300 --networks 3 --data-dir $CCL_DATA_DIR --quiet > $REF_DIR/out/ref-datadam-ipc1.eval.log 2>&1
cd $REF_DIR && $PY -m ccl.cli condense --method datadam --config datadam-reference --ipc 1 --set iterations=${DD_ITERS:-200} --init-set out/init-ipc1.pt --data-dir $CCL_DATA_DIR --out out/ccl-datadam-ipc1.pt --quiet > out/ccl-datadam-ipc1.log 2>&1 && $PY -m ccl.cli evaluate out/ccl-datadam-ipc1.pt --epochs 300 --networks 3 --data-dir $CCL_DATA_DIR --quiet > out/ccl-datadam-ipc1.eval.log 2>&1

# --- DataDAM IPC 10 ---
cd $REF_DIR/datadam/Initial_Synthetic_Dataset && PYTHONPATH=$REF_DIR/shim:$REF_DIR/site $PY ../main_DataDAM.py --dataset CIFAR10 --model ConvNet --ipc 10 --init smart --Iteration $((${DD_ITERS:-200} - 1)) --num_eval 0 --eval_mode S --data_path $CCL_DATA_DIR --save_path $REF_DIR/out/datadam-save --out $REF_DIR/out/ref-datadam-ipc10.pt > $REF_DIR/out/ref-datadam-ipc10.log 2>&1 && $PY -m ccl.cli evaluate $REF_DIR/out/ref-datadam-ipc10.pt --epochs 300 --networks 3 --data-dir $CCL_DATA_DIR --quiet > $REF_DIR/out/ref-datadam-ipc10.eval.log 2>&1
cd $REF_DIR && $PY -m ccl.cli condense --method datadam --config datadam-reference --ipc 10 --set iterations=${DD_ITERS:-200} --init-set out/init-ipc10.pt --data-dir $CCL_DATA_DIR --out out/ccl-datadam-ipc10.pt --quiet > out/ccl-datadam-ipc10.log 2>&1 && $PY -m ccl.cli evaluate out/ccl-datadam-ipc10.pt --epochs 300 --networks 3 --data-dir $CCL_DATA_DIR --quiet > out/ccl-datadam-ipc10.eval.log 2>&1

# --- PAD IPC 10 ---
# reference experts (buffer_CL.py): PAD_EXPERTS x 4 epochs, GSAM as its README's command, the scheduler's
# epochs 20/40/60 of 100 scaled to 4 -> 1/2/2; writes out/buffers/CIFAR10_NO_ZCA/ConvNet/replay_buffer_0.pt
cd $REF_DIR/pad/buffer && rm -rf $REF_DIR/out/buffers && PYTHONPATH=$REF_DIR/shim:$REF_DIR/site $PY buffer_CL.py --dataset=CIFAR10 --model=ConvNet --train_epochs=4 --num_experts=${PAD_EXPERTS:-2} --save_interval=${PAD_EXPERTS:-2} --buffer_path=$REF_DIR/out/buffers --data_path=$CCL_DATA_DIR --sort_method=CIFAR10_GraNd --rho_max=0.01 --rho_min=0.01 --alpha=0.3 --lr_teacher=0.01 --mom=0. --batch_train=256 --init_ratio=0.75 --add_end_epoch=1 --rm_epoch_first=2 --rm_epoch_second=2 --rm_easy_ratio_first=0.1 --rm_easy_ratio_second=0.2 > $REF_DIR/out/ref-buffer.log 2>&1
# reference distillation (PAD_depth.py @ f1e3e28) on those experts; its config is IPC10-cpu.yaml plus this
# run's keys (pad_config.sh: PAD_depth.py takes no option but --cfg)
cd $REF_DIR && ./pad_config.sh out/ref-pad-ipc10.yaml Iteration=$((${PAD_ITERS:-20} - 1)) buffer_path=$REF_DIR/out/buffers out=$REF_DIR/out/ref-pad-ipc10.pt && cd pad/distill && PYTHONPATH=$REF_DIR/shim:$REF_DIR/site $PY PAD_depth.py --cfg $REF_DIR/out/ref-pad-ipc10.yaml > $REF_DIR/out/ref-pad-ipc10.log 2>&1 && $PY -m ccl.cli evaluate $REF_DIR/out/ref-pad-ipc10.pt --epochs 300 --networks 3 --data-dir $CCL_DATA_DIR --quiet > $REF_DIR/out/ref-pad-ipc10.eval.log 2>&1
# ccl in one command: EL2N scoring (1 network x 2 epochs, as configs/pad.toml: ccl ships no order), PAD_EXPERTS
# experts x 4 epochs (plain SGD), then matching; the progress bar goes to the log
cd $REF_DIR && $PY -m ccl.cli condense --method pad --config pad-paper --ipc 10 --set iterations=${PAD_ITERS:-20} --set num_experts=${PAD_EXPERTS:-2} --set expert_train_epochs=4 --set max_start_epoch=2 --set soft_labels=true --set init=correct --set alpha=0.5 --set score_networks=1 --set score_epochs=2 --data-dir $CCL_DATA_DIR --out out/ccl-pad-ipc10.pt > out/ccl-pad-ipc10.log 2>&1 && $PY -m ccl.cli evaluate out/ccl-pad-ipc10.pt --epochs 300 --networks 3 --data-dir $CCL_DATA_DIR --quiet > out/ccl-pad-ipc10.eval.log 2>&1
