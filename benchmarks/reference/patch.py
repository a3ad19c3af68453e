"""The minimal patches to the reference code, applied to the fresh exports (setup.sh).
Each is a literal replacement that must match exactly once; the list is the record."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

PATCHES = [
    # --- DataDistillation/DataDAM @ 0f6ea09 ---
    ("datadam/utils.py", "    net = net.cuda()\n",
     "    net = net.to('cuda' if torch.cuda.is_available() else 'cpu')  # PATCH: the CPU where there is no GPU\n",
     "get_network: .cuda() -> the CPU"),
    ("datadam/main_DataDAM.py",
     "from utils import get_loops, get_dataset, get_network, get_eval_pool, evaluate_synset, get_daparam, get_time, TensorDataset, epoch, DiffAugment, ParamDiffAug, get_attention\n",
     "from utils import get_loops, get_dataset, get_network, get_eval_pool, evaluate_synset, get_daparam, get_time, TensorDataset, epoch, DiffAugment, ParamDiffAug, get_attention\n"
     "from local_data import get_dataset_datadam as get_dataset, save_set  # PATCH: ccl's CIFAR-10 tensors, same normalisation\n",
     "get_dataset -> the local tensors (shim/local_data.py)"),
    ("datadam/main_DataDAM.py",
     "    parser.add_argument('--task_balance', type=float, default=0.01, help='balance attention with output')\n",
     "    parser.add_argument('--task_balance', type=float, default=0.01, help='balance attention with output')\n"
     "    parser.add_argument('--out', type=str, required=True, help='PATCH: ccl set file written at the end')\n",
     "--out: where the final set goes"),
    ("datadam/main_DataDAM.py",
     "    print('\\n==================== Final Results ====================\\n')\n",
     "    save_set(args.out, image_syn, label_syn, 'datadam-reference', args.ipc, iterations=args.Iteration + 1)  # PATCH\n"
     "    print('\\n==================== Final Results ====================\\n')\n",
     "save image_syn / label_syn in ccl's set format after the last iteration"),
    ("datadam/main_DataDAM.py", "            if it in eval_it_pool:\n",
     "            if it in eval_it_pool and args.num_eval > 0:  # PATCH: --num_eval 0 evaluates nothing\n",
     "--num_eval 0: no evaluation inside the run (ccl evaluate scores the saved set)"),
    ("datadam/main_DataDAM.py",
     "    print('\\n==================== Final Results ====================\\n')\n",
     "    if args.num_eval == 0:  # PATCH: nothing was evaluated, so there are no results to print\n"
     "        return\n"
     "    print('\\n==================== Final Results ====================\\n')\n",
     "--num_eval 0: return after saving (the result tables need evaluations)"),
    # --- NUS-HPC-AI-Lab/PAD @ f1e3e28 ---
    ("pad/buffer/buffer_CL.py",
     "from utils.utils_cl_scheduler import linear_cl_scheduler_acse, linear_cl_scheduler_desc\n",
     "from utils.utils_cl_scheduler import linear_cl_scheduler_acse, linear_cl_scheduler_desc\n"
     "from local_data import get_dataset_pad as get_dataset  # PATCH: ccl's CIFAR-10 tensors, same normalisation\n",
     "get_dataset -> the local tensors"),
    ("pad/buffer/buffer_CL.py", "        timestamps.append([p.detach().cpu() for p in teacher_net.parameters()])\n\n        lr_schedule",
     "        timestamps.append([p.detach().cpu().clone() for p in teacher_net.parameters()])  # PATCH: a copy on the CPU too\n\n        lr_schedule",
     "the initial snapshot: .cpu() of a CPU tensor is the tensor itself, so every saved epoch aliased the final weights"),
    ("pad/buffer/buffer_CL.py", "            timestamps.append([p.detach().cpu() for p in teacher_net.parameters()])\n",
     "            timestamps.append([p.detach().cpu().clone() for p in teacher_net.parameters()])  # PATCH: a copy on the CPU too\n",
     "the per-epoch snapshots: the same aliasing"),
    ("pad/buffer/buffer_CL.py", "    for it in range(10):\n",
     "    for it in range(args.save_interval):  # PATCH: was 10 experts a process\n",
     "experts per process: save_interval instead of a hard-coded 10 (so 2 experts are possible)"),
    ("pad/buffer/buffer_CL.py", "    for pid in range(args.num_experts // 10):\n",
     "    for pid in range(args.num_experts // args.save_interval):  # PATCH: was // 10\n",
     "processes: num_experts // save_interval"),
    ("pad/distill/PAD_depth.py",
     "from utils.utils_baseline import get_dataset, get_network, get_eval_pool, plot_loss_interval, evaluate_synset, get_time, \\\n    DiffAugment, ParamDiffAug\n",
     "from utils.utils_baseline import get_dataset, get_network, get_eval_pool, plot_loss_interval, evaluate_synset, get_time, \\\n    DiffAugment, ParamDiffAug\n"
     "from local_data import get_dataset_pad as get_dataset, save_set  # PATCH: ccl's CIFAR-10 tensors, same normalisation\n",
     "get_dataset -> the local tensors"),
    ("pad/utils/cfg.py", "CFG.Label_Model_Timestamp = -1",
     "CFG.Label_Model_Timestamp = -1\nCFG.out = ''  # PATCH: ccl set file written at the end",
     "a config key for the output file"),
    ("pad/distill/PAD_depth.py", "    wandb.finish()\n    print(all_accs)\n",
     "    save_set(args.out, image_syn, torch.arange(num_classes).repeat_interleave(args.ipc), 'pad-reference', args.ipc,\n"
     "             soft_labels=label_syn, syn_lr=float(syn_lr.item()), iterations=args.Iteration + 1)  # PATCH\n"
     "    wandb.finish()\n    print(all_accs)\n",
     "save image_syn, the learned logits (soft_labels) and syn_lr in ccl's set format after the last iteration"),
]


def main() -> None:
    for path, old, new, why in PATCHES:
        file = ROOT / path
        text = file.read_text()
        if text.count(old) != 1:
            sys.exit(f"{path}: the text to patch ({why}) occurs {text.count(old)} times, not once")
        file.write_text(text.replace(old, new))
        print(f"patched {path}: {why}")


if __name__ == "__main__":
    main()
