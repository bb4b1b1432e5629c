"""The CLI convention, checked on every subcommand so it cannot drift back (see bitlens/cli/options.py)."""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bitlens.cli.main import build_parser, main
from bitlens.cli.options import Flag

OPTION = re.compile(r"^--[a-z0-9]+(-[a-z0-9]+)*$")
SRC = Path(__file__).resolve().parents[1] / "src" / "bitlens"


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, (*path, name))


COMMANDS = [path for path, _ in _walk(build_parser())]


def test_every_command_is_walked():
    names = {" ".join(p) for p in COMMANDS}
    assert {"train", "extract", "synth", "demo", "compare", "interpret", "entropy layers", "entropy positions",
            "entropy icl", "compress", "decompress"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "bitlens")
def test_options_follow_the_convention(path):
    parser = dict(_walk(build_parser()))[path]
    seen_dests = set()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        assert action.option_strings, f"{path}: positional argument {action.dest} (options only)"
        for opt in action.option_strings:
            assert OPTION.match(opt), f"{' '.join(path)}: {opt} is not kebab-case"
        assert action.dest not in seen_dests
        seen_dests.add(action.dest)
        help_text = action.help or ""
        assert help_text.strip(), f"{path}: {action.option_strings[0]} has no help"
        if action.nargs == 0:  # a switch: must be --x/--no-x
            assert isinstance(action, Flag), f"{path}: {action.option_strings[0]} is a switch without --no-x"
            positive, negative = action.option_strings
            assert negative == "--no-" + positive[2:]
        if action.required:
            assert help_text.endswith("(required)"), f"{path}: {action.option_strings[0]} required but not marked"
        else:
            assert "(default: " in help_text, f"{path}: {action.option_strings[0]} does not state its default"


def test_literal_fields_list_their_choices():
    parser = dict(_walk(build_parser()))
    for path, expected in [(("interpret",), {"--mode": ["default", "comsem"]}),
                           (("extract",), {"--dtype": ["float16", "float32"]}),
                           (("entropy", "positions"), {"--mode": ["per_position", "shared"]}),
                           (("train",), {"--surrogate": ["identity", "sigmoid", "paper", "official"],
                                         "--preset": ["scale_free", "paper"]})]:
        actions = {a.option_strings[0]: a for a in parser[path]._actions if a.option_strings}
        for opt, choices in expected.items():
            assert list(actions[opt].choices) == choices


def test_same_thing_same_name():
    parser = dict(_walk(build_parser()))
    options = {p: {o for a in parser[p]._actions for o in a.option_strings} for p in parser}
    assert "--coder" in options[("compress",)] and "--coder" in options[("interpret",)]
    for p in [("demo",), ("interpret",), ("entropy", "layers"), ("entropy", "positions"), ("entropy", "icl"),
              ("compress",), ("compare",), ("train",), ("extract",)]:
        assert "--device" in options[p], p
    for p in [("extract",), ("demo",), ("compress",), ("compare",), ("train",), ("interpret",)]:
        assert "--progress" in options[p], p
    for p in [("compare",), ("demo",), ("train",), ("compress",), ("entropy", "layers")]:
        assert "--val-fraction" in options[p], p
    assert "--forward-batch" in options[("extract",)] and "--batch-size" not in options[("extract",)]
    for p, names in options.items():
        assert not names & {"--tokens", "--eval-rows", "--max-rows", "--n", "--bae"}, p


def test_help_is_stable_across_hash_seeds():
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(subprocess.run([sys.executable, "-m", "bitlens", "train", "--help"], env=env,
                                   capture_output=True, text=True, check=True).stdout)
    assert outs[0] == outs[1] and "--lr-decay" in outs[0]


def test_lists_take_spaces_or_commas(tmp_path):
    parser = build_parser()
    a = parser.parse_args(["entropy", "icl", "--ks", "0", "1,2", "--tasks", "spam,party", "--layers", "3,5"])
    assert a.cfg__ks == [0, 1, 2] and a.cfg__tasks == ["spam", "party"] and a.cfg__layers == [3, 5]
    assert main(["entropy", "icl", "--tasks", "spam,nope", "--out", str(tmp_path)]) == 2


def test_abbreviations_are_refused(capsys):
    assert main(["train", "--activations", "x.npy", "--out", "o", "--entropy-w", "3"]) == 2
    assert "unrecognized arguments: --entropy-w" in capsys.readouterr().err


def test_preset_sets_defaults_and_typed_options_win():
    parser = build_parser("paper")
    a = parser.parse_args(["train", "--activations", "x.npy", "--out", "o", "--preset", "paper",
                           "--entropy-weight", "3"])
    assert a.loss__entropy_weight == 3.0 and a.loss__cov_weight == 1e-7 and a.bae__surrogate == "official"
    assert a.loss__warmup_fraction == 0.25 and a.train__lr == 5e-4


def test_preset_help_shows_the_preset_defaults(capsys):
    assert main(["train", "--preset", "paper", "--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"--cov-weight FLOAT\s+.*\(default: 1e-07\)", out.replace("\n", " "))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level bitlens package) of every relative import in ``path``."""
    rel = path.relative_to(SRC).parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(rel[:-1])[:len(rel) - node.level]
            target = base + (node.module.split(".") if node.module else [node.names[0].name])
            found.append((node.lineno, target[0].removesuffix(".py")))
    return found


# the layout, bottom to top: a module may import only from its own package or one below it
RANK = {"_version": 0, "io": 0, "config": 0, "devices": 0, "plotting": 0, "redact": 0, "data": 1, "coders": 2, "ops": 3,
        "analysis": 4, "training": 5, "experiments": 6, "interpretation": 7, "report": 7, "api": 8, "cli": 9,
        "__init__": 10, "__main__": 10}


def test_no_import_runs_up_the_layout():
    bad = []
    for path in SRC.rglob("*.py"):
        me = path.relative_to(SRC).parts[0].removesuffix(".py")
        assert me in RANK, f"{me} has no place in the layout"
        for line, other in _imports(path):
            if other != me and RANK.get(other, 99) > RANK[me]:
                bad.append(f"{path.relative_to(SRC)}:{line} ({me}) imports {other}")
    assert not bad, "\n".join(bad)


def test_import_bitlens_leaves_matplotlib_alone():
    code = "import bitlens, sys; assert 'matplotlib.pyplot' not in sys.modules and 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_module_import_cycle():
    """No two modules import each other, directly or through others (lazy imports inside functions included)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mod = ".".join(parts[:-1] if is_pkg else parts)
        pkg = parts[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg[:len(pkg) - (node.level - 1)]
                deps.add(".".join(base + ([node.module] if node.module else [])))
        graph[mod] = deps
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if dep not in graph:
                continue
            path = stack + [node]
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])
