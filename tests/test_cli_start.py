"""`ccl list`, `--help`, `--version` and every misspelt name or bad number are answered
before torch, torchvision or Avalanche load (they take seconds to import; issue 46's
"answers in under a second"), and a misspelt name comes back with the closest real one.
What is checked is which modules were imported when the answer came, never a time."""
import json
import os
import subprocess
import sys

import pytest

from ccl.cli_options import error_text

HEAVY = ("torch", "torchvision", "avalanche")

# Each command runs in one fresh interpreter, one after another, through click's CliRunner;
# after each the heavy modules in sys.modules are listed (a command that loaded one would
# leave it there for all that follow, so the first to load it is the one reported).
PROBE = """
import json, sys
from click.testing import CliRunner
from ccl.cli import main
answers = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, args + (["--runs-dir", sys.argv[2]] if args[0] == "run" else []))
    answers.append({"args": args, "code": result.exit_code, "output": result.output,
                    "heavy": [m for m in %r if m in sys.modules]})
print(json.dumps(answers))
""" % (HEAVY,)

# (arguments, exit code, what the answer must say)
COMMANDS = [
    (["--help"], 0, "Usage: "),
    (["--version"], 0, "ccl "),
    (["list"], 0, "memories:\n"),
    (["run", "--memory", "herdng"], 2, "unknown memory 'herdng' (did you mean herding?); choose one of: none,"),
    (["run", "--memory", "typo"], 2, "unknown memory 'typo'; choose one of: none,"),
    (["run", "--strategy", "der+"], 2, "unknown strategy 'der+' (did you mean der++?)"),
    (["run", "--scenario", "split-cifar"], 2, "unknown scenario 'split-cifar' (did you mean split-cifar10?)"),
    (["run", "--model", "resnet"], 2, "Did you mean 'resnet18'?"),
    (["run", "--norm", "batchnorm"], 2, "Did you mean 'batch'?"),
    (["run", "--config", "cpu-quik"], 2, "did you mean cpu-quick?"),
    (["run", "--memory", "pad", "--memory-config", "pad-replai"], 2,
     "unknown memory preset 'pad-replai' (did you mean pad-replay?)"),
    (["run", "--memory", "random", "--memory-config", "pad"], 2, "memory 'random' takes no settings"),
    (["run", "--memory", "datadam", "--set", "iteratons=3"], 2,
     "--set iteratons: memory 'datadam' has no such setting (did you mean iterations?)"),
    (["run", "--strategy", "der", "--strategy-set", "alfa=0.1"], 2,
     "--strategy-set alfa: strategy 'der' has no such setting (did you mean alpha?); its settings: alpha, beta"),
    (["run", "--epochs", "x"], 2, "'x' is not a valid integer"),
    (["run", "--mem-size", "0"], 2, "--mem-size must be at least 1, got 0"),
    (["run", "--lr", "nan"], 2, "run.lr: expected a finite number"),
    (["compare", "--memory", "herding,datadm"], 2, "unknown memory 'datadm' (did you mean datadam?)"),
    (["compare", "--memory", "random,herding", "--set", "iterations=2"], 2,
     "--set iterations: none of the memories random, herding has a setting 'iterations'"),
    (["condense", "--method", "datadm"], 2, "Did you mean 'datadam'?"),
    (["condense", "--dataset", "cifar"], 2, "unknown data set 'cifar' (did you mean cifar10?)"),
    (["condense", "--method", "dm", "--set", "iteratons=3"], 2, "condensation method 'dm' has no such setting"),
    (["condense", "--ipc", "0"], 2, "--ipc must be at least 1, got 0"),
    (["compare", "--seeds", "0"], 2, "--seeds must be at least 1, got 0"),
    (["run", "--resume", "/nonexistent/run"], 2, "/nonexistent/run: not a run folder (no config.json)"),
    (["report", "/nonexistent/comparison"], 2, "/nonexistent/comparison: no such folder"),
    (["evaluate", "/nonexistent/set.pt"], 2, "/nonexistent/set.pt: file not found"),
    (["lst"], 2, "Did you mean 'list'?"),
]


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    runs = tmp_path_factory.mktemp("cli-start") / "runs"
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps([args for args, _, _ in COMMANDS]), str(runs)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not runs.exists()  # no answer made a run folder
    return {tuple(a["args"]): a for a in json.loads(out.stdout)}


@pytest.mark.parametrize("args, code, says", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_answered_before_torch_loads(answers, args, code, says):
    answer = answers[tuple(args)]
    assert answer["heavy"] == [], f"`ccl {' '.join(args)}` imported {answer['heavy']} before answering"
    assert answer["code"] == code and says in answer["output"], answer["output"]


def test_errors_are_one_line_in_logs(answers):
    for args, code, _ in COMMANDS:
        if code == 2 and answers[tuple(args)]["output"].startswith("error: "):
            assert answers[tuple(args)]["output"].count("\n") == 1, args


def test_list_names_the_memories_and_strategies_with_their_descriptions(answers):
    from ccl import names
    out = answers[("list",)]["output"]
    for name, description in {**names.MEMORIES, **names.STRATEGIES, **names.scenarios()}.items():
        assert f"  {name:<16} {description}\n" in out


def test_a_long_error_wraps_between_words_on_a_terminal():
    message = "unknown memory 'herdng' (did you mean herding?); choose one of: " + ", ".join(["avalanche-reservoir"] * 8)
    assert error_text(message, None) == f"error: {message}"  # logs and pipes: one line, grep finds it
    lines = error_text(message, 60).splitlines()
    assert len(lines) > 1 and all(len(line) <= 60 for line in lines)
    assert all(line.startswith("  ") for line in lines[1:])
    assert " ".join(line.strip() for line in lines) == f"error: {message}"  # nothing lost, no word broken
    assert max(len(line) for line in error_text(message, 400).splitlines()) <= 100  # wide terminals too


def test_an_error_on_a_terminal_is_wrapped_to_its_width():
    """Through a pseudo-terminal, as a user sees it: COLUMNS=60 gives lines of at most 60."""
    import pty
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "60"}
    try:
        code = subprocess.run([sys.executable, "-m", "ccl.cli", "run", "--memory", "herdng"], stderr=follower,
                              stdout=subprocess.DEVNULL, env=env).returncode
        os.close(follower)
        text = os.read(leader, 1 << 16).decode()
    finally:
        os.close(leader)
    lines = text.replace("\r\n", "\n").strip("\n").splitlines()
    assert code == 2 and len(lines) > 2 and all(len(line) <= 60 for line in lines), lines
    assert lines[0].startswith("error: unknown memory 'herdng' (did you mean herding?);")


def test_import_ccl_is_light():
    """`import ccl` (every `ccl` command's first step) loads none of them: its public
    class comes through a module __getattr__ when used (tests/test_python_api.py uses it)."""
    probe = "import sys, ccl\nprint([m for m in %r if m in sys.modules], ccl.__all__)" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.split() == ["[]", "['CondensedReplay']"], out.stderr
