"""Every file the README, docs/ and benchmarks/ name is in the tree git carries, and every
shipped run preset is a valid configuration (a clean clone has the same files as this one)."""
from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path


from ccl.experiment import make_config

ROOT = Path(__file__).parent.parent
NAMED = re.compile(r"(?<![\w/.-])((?:configs|scenarios|benchmarks|docs)/[\w./-]+\.(?:toml|py|sh|md))")


def _tracked() -> set[str] | None:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout (an sdist): the file test below still runs
    return set(out.splitlines())


def _named_files() -> set[str]:
    texts = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "benchmarks").iterdir()]
    return {m for t in texts if t.is_file() for m in NAMED.findall(t.read_text(errors="replace"))}


def test_every_file_the_documents_name_is_in_the_tree():
    named, tracked = _named_files(), _tracked()
    assert "configs/runs/cpu-protocol.toml" in named  # the pattern finds what it must
    missing = sorted(f for f in named if not (ROOT / f).is_file())
    assert not missing, f"named but missing: {missing}"
    if tracked is not None:
        untracked = sorted(f for f in named if f not in tracked)
        assert not untracked, f"named but not in git (ignored or never added): {untracked}"


def test_every_shipped_run_preset_is_a_valid_configuration():
    """With every strategy its [strategies.NAME] table names, and with none (the default's)."""
    from ccl.cli_options import config_values
    from ccl.config import read_toml
    presets = sorted((ROOT / "configs" / "runs").glob("*.toml"))
    assert {"cpu-protocol.toml", "mammoth-seq-cifar10.toml", "mammoth-seq-cifar10-500.toml"} <= \
        {p.name for p in presets}
    for path in presets:
        for strategy in (None, *read_toml(path).get("strategies", {})):
            values, _ = config_values({"strategy": strategy}, path, (), False, None)
            cfg = make_config(**values)
            assert cfg.scenario == "split-cifar10", path.name


def test_the_mammoth_presets_differ_in_the_buffer_and_its_published_settings_alone():
    from ccl.config import read_toml
    runs = ROOT / "configs" / "runs"
    at_200, at_500 = read_toml(runs / "mammoth-seq-cifar10.toml"), read_toml(runs / "mammoth-seq-cifar10-500.toml")
    tables_200, tables_500 = at_200.pop("strategies"), at_500.pop("strategies")
    assert (at_200.pop("mem_size"), at_500.pop("mem_size")) == (200, 500) and at_200 == at_500
    # mammoth lists ER-ACE on seq-cifar10 at buffer 200 only; DER++'s alpha is 0.2 at 500
    assert tables_200.pop("er-ace") == {"lr": 0.1} and tables_500.pop("der++")["alpha"] == 0.2
    assert {s: t for s, t in tables_200.items() if s != "der++"} == tables_500


def test_the_command_line_offers_every_choice_the_runner_takes():
    from click import Choice

    from ccl.cli import main
    from ccl.run_config import MEM_DTYPE_NAMES
    from ccl.experiment import MEM_AUGMENTS, MEM_DTYPES, PROTOCOLS, STREAM_AUGMENTS
    assert tuple(MEM_DTYPES) == MEM_DTYPE_NAMES
    runner_choices = {"mem_augment": MEM_AUGMENTS, "mem_dtype": MEM_DTYPES, "protocol": PROTOCOLS,
                      "stream_augment": STREAM_AUGMENTS}
    options = {p.name: p for p in main.commands["run"].params}
    for name, choices in runner_choices.items():
        assert isinstance(options[name].type, Choice) and set(options[name].type.choices) == set(choices), name


def _table_flags(section: str) -> set[str]:
    """Every `--flag` in the first column of the README table under `section`."""
    text = (ROOT / "README.md").read_text()
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    return {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)(?: [A-Z]+)?`", row.split("|")[1])}


def _command_flags(command) -> set[str]:
    flags = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}
    return flags - {"--help"}


def test_the_readme_option_tables_match_the_command_line():
    from ccl.cli import main
    run_flags = _command_flags(main.commands["run"])
    assert _table_flags("## Options of `ccl run`") == run_flags
    compare_only = _command_flags(main.commands["compare"]) - run_flags
    assert _table_flags("## Comparing") == compare_only | {"--strategy", "--memory", "--mem-size"}  # axes


def test_the_light_name_lists_match_the_registries():
    """ccl.names answers `ccl list` and misspelt names before torch loads: it must say what
    the registries say, entry for entry and in their order."""
    from ccl import names
    from ccl.condense.methods import METHODS
    from ccl.data import DATASETS
    from ccl.data.scenarios import scenarios
    from ccl.memory import MEMORIES
    from ccl.strategies import STRATEGIES

    def described(registry):
        return [(e.name, e.description) for e in registry.entries()]

    def fields(cls):
        return tuple(f.name for f in dataclasses.fields(cls)) if cls is not None else ()
    assert list(names.MEMORIES.items()) == described(MEMORIES)
    assert list(names.STRATEGIES.items()) == described(STRATEGIES)
    assert list(names.CONDENSATION_METHODS.items()) == described(METHODS)
    assert names.DATASETS == tuple(DATASETS.names())
    assert names.STRATEGY_SETTINGS == {e.name: fields(e.value.settings) for e in STRATEGIES.entries()}
    assert names.METHOD_SETTINGS == {e.name: fields(e.value.settings) for e in METHODS.entries()}
    assert names.MEMORY_SETTINGS == {e.name: fields(e.value.settings) + e.value.filler_keys
                                     for e in MEMORIES.entries()}
    assert names.FILLER_SETTINGS == {e.name: e.value.filler_keys for e in MEMORIES.entries() if e.value.filler_keys}
    assert names.scenarios() == {name: s.description for name, s in scenarios().items()}
    assert all(names.scenario_dataset(name) == s.dataset for name, s in scenarios().items())


def test_the_readme_is_a_guide_of_at_most_265_lines():
    # 230 before the Python example (issue 37), which runs as a test from the README itself
    assert len((ROOT / "README.md").read_text().splitlines()) <= 265


def test_every_method_preset_loads_into_its_settings():
    """configs/<method>[-variant].toml: a typo in a shipped preset fails here, not in a user's run."""
    from ccl.condense.methods import method_settings
    from ccl.memory import MEMORIES, split_settings
    presets = sorted((ROOT / "configs").glob("*.toml"))
    assert {"datadam.toml", "pad.toml", "pad-learner.toml"} <= {p.name for p in presets}
    for path in presets:
        method = path.stem.split("-")[0]
        settings, _ = split_settings(method, path.stem, {})
        assert type(settings).__name__.endswith("Settings"), path
        assert type(method_settings(method, path.stem, {}, aside=MEMORIES.get(method).value.filler_keys)) is \
            type(settings)  # as `ccl condense` reads it


def test_the_readme_creates_the_folder_it_extracts_into():
    text = (ROOT / "README.md").read_text()
    for line in (line for line in text.splitlines() if "tar -x" in line):
        folder = re.search(r"tar -x\w* \S+ -C (\S+)", line).group(1)
        assert f"mkdir -p {folder} && tar" in line, line
