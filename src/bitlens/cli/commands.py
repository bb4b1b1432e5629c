"""Sub-commands: each registers its options (from config dataclasses, see ``options.py``) and runs one API call."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

from ..coders.bae import BAEConfig
from ..training.config import PRESETS, LossConfig, TrainConfig
from .options import add_config, read_config, typed_options

Register = Callable[[argparse.ArgumentParser, dict[str, Any]], None]


@dataclass
class Command:
    name: str
    help: str
    register: Register
    """Adds the options; receives the preset's field defaults (empty without --preset)."""
    run: Callable[[argparse.Namespace, list[str]], int | None]
    resumable_hint: str = "rerun the same command to continue where it stopped"


def launch_rank() -> int:
    """This process's rank when launched by torchrun (0 otherwise): only rank 0 prints results."""
    import os

    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _add_training_options(p, defaults: dict[str, Any]) -> None:
    add_config(p, BAEConfig, "bae", defaults=defaults, title="BAE architecture")
    add_config(p, TrainConfig, "train", defaults=defaults, title="optimisation")
    add_config(p, LossConfig, "loss", defaults=defaults, title="objective")


def _training_configs(args) -> tuple[BAEConfig, TrainConfig, LossConfig]:
    return read_config(args, BAEConfig, "bae"), read_config(args, TrainConfig, "train"), read_config(args, LossConfig, "loss")


# ---- train -----------------------------------------------------------------------------------------------------
@dataclass
class TrainInputs:
    """What to train on and where the run goes."""

    out: str
    """Run folder (checkpoint/, metrics.jsonl, curves.png, final_metrics.json, manifest.json)."""
    activations: str = ""
    """Activation file: a 2-D float array [rows, dim] as .npy or .safetensors (or give --store)."""
    store: str = ""
    """Activation store written by `bitlens extract` (or give --activations)."""
    model: str = ""
    """Train straight from this causal LM, without a store: its activations over --corpus are computed on the fly
    into a shuffling buffer (under torchrun each process runs the LM on its own documents). Names as in extract."""
    corpus: str = "embedded"
    """With --model: the text (names as in extract)."""
    max_tokens: int = 0
    """With --model: training tokens per pass over the corpus, all processes together (0 = the whole corpus);
    validation reads up to --eval-tokens tokens of held-out documents on top."""
    max_seq_len: int = 256
    """With --model: tokens per LM input."""
    forward_batch: int = 16
    """With --model: sequences per LM forward pass."""
    buffer_rows: int = 65536
    """With --model: rows of the shuffling buffer (one window of LM activations, shuffled, then served)."""
    model_dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """With --model: dtype the LM runs in."""
    layer: int | None = None
    """Layer to train on (hidden_states[L]); none = the store's only layer (with --model: the middle layer)."""
    keep_outliers: bool = False
    """With --store: keep rows whose norm exceeds 10x the layer's median (attention sinks; left out by default)."""
    key: str = ""
    """Tensor name inside a .safetensors file holding several."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint with its saved settings; --steps/--epochs extend the run,
    device/progress/evaluation options may change, other options are ignored."""
    allow_new_data: bool = False
    """With --resume: continue on data other than the run's so far (refused otherwise); the manifest lists every
    input the run has seen."""


def _register_train(p, defaults) -> None:
    from ..coders.multibit import LevelConfig

    add_config(p, TrainInputs, "inputs", title="data and run folder")
    _add_training_options(p, defaults)
    add_config(p, LevelConfig, "levels", defaults=defaults, title="multi-bit decoding (ours, experimental)")


def _run_train(args, argv) -> int:
    from ..api import train_run
    from ..io import BitlensError
    from ..training.trainer import Trainer

    inputs = read_config(args, TrainInputs, "inputs")
    if sum(map(bool, (inputs.activations, inputs.store, inputs.model))) != 1:
        raise BitlensError("give one of --activations FILE, --store DIR or --model M")
    bae, train, loss = _training_configs(args)
    from ..coders.multibit import LevelConfig, MultiBitConfig

    levels = read_config(args, LevelConfig, "levels")
    if levels.bits_per_unit > 1:
        if bae.init == "topk":
            raise BitlensError("--init topk cuts one-bit units; with --bits-per-unit > 1 use --init sparse or torch")
        bae = MultiBitConfig.from_bae(bae, levels)
    typed = typed_options(argv)
    overrides = {name: getattr(train, name) for name in typed & Trainer.RESUMABLE_OVERRIDES}
    if inputs.resume:
        ignored = typed & {f for cfg in (bae, train, loss) for f in cfg.to_dict()} - Trainer.RESUMABLE_OVERRIDES
        if ignored:
            import logging

            logging.getLogger("bitlens").warning("resuming uses the checkpoint's settings; ignored: %s",
                                                 ", ".join(sorted(ignored)))
    if inputs.model:
        from ..api import train_from_model

        stats = train_from_model(inputs.model, inputs.corpus, inputs.out, layer=inputs.layer,
                                 max_tokens=inputs.max_tokens, max_seq_len=inputs.max_seq_len,
                                 forward_batch=inputs.forward_batch, buffer_rows=inputs.buffer_rows,
                                 model_dtype=inputs.model_dtype, bae=bae, train=train, loss=loss,
                                 resume=inputs.resume, resume_overrides=overrides,
                                 allow_new_data=inputs.allow_new_data)
    else:
        stats = train_run(inputs.activations or inputs.store, inputs.out, layer=inputs.layer,
                          key=inputs.key or None, keep_outliers=inputs.keep_outliers, bae=bae, train=train, loss=loss,
                          resume=inputs.resume, resume_overrides=overrides, allow_new_data=inputs.allow_new_data)
    if launch_rank() > 0:
        return 0
    target = f" (target {stats['target_fvu']:g})" if "target_fvu" in stats else " (fixed weights)"
    print(f"trained to step {stats['step']}: FVU {stats.get('fvu', float('nan')):.4f}{target}, "
          f"entropy {stats.get('entropy_bits', float('nan')):.2f} bits, L0 {stats.get('l0', float('nan')):.1f}; "
          f"checkpoint in {inputs.out}/checkpoint")
    return 0


# ---- synth -----------------------------------------------------------------------------------------------------
@dataclass
class SynthOutput:
    """Where the benchmark writes."""

    out: str = "runs/synth"
    """Output folder (synth.json, synth.png, one run per r; finished runs are reused)."""


def _register_synth(p, defaults) -> None:
    from ..experiments.synth import SynthConfig

    add_config(p, SynthOutput, "synth_out", title="output")
    add_config(p, SynthConfig, "synth", title="synthetic data")
    from ..training.config import synth_loss

    # --target-fvu here is the FVU allowed above each planted code's floor (SYNTH_TARGET_FVU)
    _add_training_options(p, {**synth_loss().to_dict(), **defaults})


def _run_synth(args, argv) -> int:
    from ..experiments.synth import SynthConfig, run_synth

    out = read_config(args, SynthOutput, "synth_out").out
    bae, train, loss = _training_configs(args)
    synth = read_config(args, SynthConfig, "synth")
    synth.bit_list()  # validate before any work
    if synth.family == "superposed" and loss.preset == "scale_free":  # its own defaults, for options not typed
        from dataclasses import replace

        from ..training.config import SUPERPOSED_LOSS

        loss = replace(loss, **{k: v for k, v in SUPERPOSED_LOSS.items() if k not in typed_options(argv)})
    summary = run_synth(synth, out, bae, train, loss)
    print(f"family {synth.family}: max |estimated - true| = {summary['max_abs_error_bits']:.2f} bits, "
          f"max relative error {summary['max_rel_error']:.1%}, max FVU = {summary['max_fvu']:.4f} "
          f"(target {summary['target_fvu_above_floor']:g} above the floor); "
          f"wrote {out}/synth.json and {out}/synth.png")
    return 0


# ---- commands that are one config and one runner -------------------------------------------------------------
def _config_options(module: str, config: str) -> Register:
    """Registers the fields of ``module.config`` (imported only when the parser is built) under ``args.cfg__*``."""
    def register(p, defaults) -> None:
        cls = getattr(importlib.import_module(module, __package__), config)
        add_config(p, cls, "cfg", title=f"{p.prog} options")

    return register


def _single(module: str, config: str, runner: str, report: Callable[[Any, Any], None]) -> tuple[Register, Callable]:
    """A command that is one config and one runner: its options, and a run that reports the runner's result."""
    def run(args, argv) -> int:
        mod = importlib.import_module(module, __package__)
        cfg = read_config(args, getattr(mod, config), "cfg")
        result = getattr(mod, runner)(cfg)
        if launch_rank() == 0:  # under torchrun process 0 reports for all
            report(cfg, result)
        return 0

    return _config_options(module, config), run


def _report_extract(cfg, out) -> None:
    """Nothing to add: extract_main logs its own summary line."""


def _report_compare(cfg, summary) -> None:
    print(f"wrote {cfg.out}/compare.json, compare.md, frequencies.png, units.png "
          f"({summary['seconds_this_run']['total']:.0f}s)")


def _report_sweep(cfg, summary) -> None:
    print(f"{len(summary['points'])} points ({summary['trained_this_run']} trained or resumed this run); wrote "
          f"{cfg.out}/sweep.json and frontier_l0.png, frontier_ce.png, frontier_units.png, frontier_lexical.png "
          f"({summary['seconds_this_run']:.0f}s)")


def _report_interpret(cfg, summary) -> None:
    if "n_scored" in summary:
        print(f"{summary['n_scored']} of {summary['n_features']} features scored; interpretable by threshold "
              f"{summary['n_interpretable']}; mean {summary['score_name']} {summary['mean_score']}; "
              f"{summary['usage']['calls']} LLM calls, {summary['usage']['cache_hits']} cache hits; "
              f"wrote {cfg.out}/summary.json")


def _report_compress(cfg, summary) -> None:
    for row in summary["rows"]:
        print(f"{row['format']:<48} {row['bits_per_vector']:10.1f} bits/vector  MSE {row['mse']:.4g}  "
              f"FVU {row['fvu']:.4f}  cosine {row['cosine']:.4f}")
    print(f"round trip exact: {summary['round_trip_exact']}; wrote {cfg.out}/compress.json")


def _report_decompress(cfg, path) -> None:
    print(f"wrote {path}")


def _report_dashboard(cfg, result) -> None:
    print(f"dashboard: {result.index} ({result.summary['header']['n_live']} live features; open it in a browser)")


def _run_demo(args, argv) -> int:
    from ..api import demo
    from ..experiments.demo import DemoConfig, report

    print(report(demo(read_config(args, DemoConfig, "cfg"))))
    return 0


# ---- entropy layers | positions | icl ----------------------------------------------------------------------------
def _report_layers(cfg, summary) -> None:
    for row in summary["layers"]:
        print(f"layer {row['layer']:>3}: {row['entropy_bits']:7.1f} bits "
              f"(corrected {row['entropy_bits_corrected']:.1f}), FVU {row['fvu']:.3f}, L0 {row['l0']:.1f}")
    print(f"wrote {cfg.out}/layers.json and {cfg.out}/layers.png")


def _report_rd(cfg, summary) -> None:
    for p in summary["points"]:
        print(f"target {p['target_fvu']:.3f}: FVU {p['fvu']:.4f} ± {p['fvu_std']:.4f}, "
              f"{p['entropy_bits']:.1f} ± {p['entropy_bits_std']:.1f} bits, {p['ratio_to_gaussian']:.2f}x the "
              f"Gaussian R(D), dead {p['dead']:.0f}, constant-on {p['constant_on']:.0f}"
              + (f" (d' = {p['expansion']}d)" if p.get("d_prime", summary["d_prime"]) != summary["d_prime"] else ""))
    knee = ("none" if summary["knee_bits"] is None
            else f"{summary['knee_bits']:.1f} bits at FVU {summary['knee_fvu']:.3f}")
    print(f"knee: {knee}; wrote {cfg.out}/rd.json and {cfg.out}/rd.png")


def _report_positions(cfg, summary) -> None:
    for entry in summary["layers"]:
        curve = ", ".join(f"{c['position']}:{c['entropy_bits']:.0f}" for c in entry["positions"])
        print(f"layer {entry['layer']:>3}: saturation at {entry['saturation_position']}, plateau "
              f"{entry['plateau_bits']:.1f} bits  [{curve}]")
    print(f"wrote {cfg.out}/positions.json and {cfg.out}/positions.png")


def _report_icl(cfg, summary) -> None:
    for name, task in summary["tasks"].items():
        acc = ", ".join(f"k={a['k']}:{a['accuracy']:.2f}" for a in task["accuracy"])
        print(f"{name}: accuracy {acc}")
        for entry in task["layers"]:
            print(f"  layer {entry['layer']:>3}: " + ", ".join(f"k={c['k']}:{c['entropy_bits']:.1f}"
                                                          for c in entry["curve"]))
    print(f"wrote {cfg.out}/icl.json and {cfg.out}/icl.png")


def _report_steer(cfg, summary) -> None:
    for name, task in summary["tasks"].items():
        z, k = task["zero_shot"], task["k_shot"]
        print(f"{name}: 0-shot {z['accuracy']:.2f} [{z['ci95'][0]:.2f}, {z['ci95'][1]:.2f}], {summary['k']}-shot "
              f"{k['accuracy']:.2f} [{k['ci95'][0]:.2f}, {k['ci95'][1]:.2f}] (n={z['n']})")
        for method, entry in task["methods"].items():
            b = entry["best"]
            print(f"  {method:<14} best {b['accuracy']:.2f} [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}] at strength "
                  f"{b['strength']:g} (top-1 {b['top1']:.2f})")
    print(f"wrote {cfg.out}/steer.json and {cfg.out}/steer.png")


ENTROPY_ANALYSES = {
    "layers": ("Entropy, FVU and L0 of each layer, one BAE per layer on the same tokens.",
               _single("..experiments.layers", "LayersConfig", "run_layers", _report_layers)),
    "positions": ("Entropy against token position per layer, with the saturation position and plateau.",
                  _single("..experiments.positions", "PositionsConfig", "run_positions", _report_positions)),
    "icl": ("Entropy of the last prompt token against the number of ICL demonstrations, with ICL accuracy.",
            _single("..experiments.icl", "ICLConfig", "run_icl", _report_icl)),
    "rd": ("Entropy-distortion curve: one BAE per target FVU and seed, bits vs achieved FVU, the knee and the "
           "Gaussian rate-distortion reference.", _single("..experiments.rd", "RDConfig", "run_rd", _report_rd)),
}


def _register_entropy(p, defaults) -> None:
    from .main import new_subparsers

    sub = new_subparsers(p, "analysis", "ANALYSIS")
    for name, (help_text, (register, _)) in ENTROPY_ANALYSES.items():
        register(sub.add_parser(name, help=help_text, description=help_text), defaults)


def _run_entropy(args, argv) -> int:
    _, (_, run) = ENTROPY_ANALYSES[args.analysis]
    return run(args, argv)


COMMANDS = [
    Command("extract", "Extract hidden states of a causal LM over a corpus into an activation store.",
            *_single("..data.extract", "ExtractConfig", "extract_main", _report_extract)),
    Command("train", "Train a Binary Autoencoder on an activation file or store.", _register_train, _run_train,
            resumable_hint="continue with the same command plus --resume"),
    Command("synth", "Synthetic known-entropy benchmark: one BAE per r bits, estimated vs true entropy.",
            _register_synth, _run_synth),
    Command("demo", "The whole pipeline on the embedded model and corpus: extract, train a BAE, report features, "
            "write the feature dashboard.", _config_options("..experiments.demo", "DemoConfig"), _run_demo),
    Command("compare", "Train the BAE and the SAE baselines at the same width on one store and layer; compare "
            "statistics and splicing.", *_single("..experiments.compare", "CompareConfig", "run_compare",
                                                 _report_compare)),
    Command("sweep", "Frontiers: train the BAE and the SAE baselines at several sparsity settings each (target FVU, "
            "k, L1, target L0) on one store and layer; FVU, L0, dead/dense units, CE recovered and lexical F1 per "
            "point, plotted at shared FVU.", *_single("..experiments.sweep", "SweepConfig", "run_sweep", _report_sweep)),
    Command("interpret", "Explain coder features with an LLM and score the explanations (default or comsem mode).",
            *_single("..interpretation.pipeline", "InterpretConfig", "run_interpret", _report_interpret)),
    Command("dashboard", "Static HTML feature browser for a coder: sortable index and one page per live feature "
            "(examples, contrasts, tokens, neighbours, logit lens).",
            *_single("..report.dashboard", "DashboardConfig", "run_dashboard", _report_dashboard)),
    Command("entropy", "Information analyses: entropy across layers, token positions and ICL demonstrations, and "
            "the entropy-distortion curve (rd).",
            _register_entropy, _run_entropy),
    Command("compress", "Store hidden states as BAE codes (bit-packed and sparse files) and report bits vs error.",
            *_single("..experiments.compress", "CompressConfig", "run_compress", _report_compress)),
    Command("decompress", "Decode a BAE code file back to hidden states (.npy).",
            *_single("..experiments.compress", "DecompressConfig", "run_decompress", _report_decompress)),
    Command("steer", "In-context-learning steering with feature task vectors: add each coder's (and the centroid's) "
            "task vector at the last token during 0-shot inference and measure accuracy.",
            *_single("..experiments.steer", "SteerConfig", "run_steer", _report_steer)),
]
BY_NAME = {c.name: c for c in COMMANDS}
PRESET_NAMES = tuple(PRESETS)
