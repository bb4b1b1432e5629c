"""Sub-commands: each registers its options and runs one API call."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from typing import Callable

from ..coders.bae import BAEConfig
from ..training.config import LossConfig, TrainConfig


@dataclass
class Command:
    name: str
    help: str
    register: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, list[str]], int | None]


def _add_training_options(p, loss: LossConfig | None = None) -> None:
    p.add_arguments(BAEConfig, dest="bae")
    p.add_arguments(TrainConfig, dest="train")
    p.add_arguments(LossConfig, dest="loss", default=loss)


def _explicit(argv: list[str], *configs) -> set[str]:
    """Names of config fields the user typed on the command line (so presets leave them alone)."""
    typed = {a.split("=", 1)[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    typed |= {t[2:] for t in typed if t.startswith("no")}  # --noprogress sets `progress`
    return {f.name for cfg in configs for f in fields(cfg) if f.name in typed}


def _configs(args, argv):
    bae, train, loss = args.bae, args.train, args.loss
    if loss.preset == "paper":
        from ..training.run import apply_paper_preset
        bae, train, loss = apply_paper_preset(bae, train, loss, keep=_explicit(argv, bae, train, loss) - {"preset"})
    return bae, train, loss


# ---- train -----------------------------------------------------------------------------------------------------
def _register_train(p) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--activations", metavar="FILE",
                        help="activation file: a 2-D float array [rows, dim] as .npy or .safetensors")
    source.add_argument("--store", metavar="DIR", help="activation store written by `bitlens extract`")
    p.add_argument("--layer", type=int, default=None,
                   help="layer of the store to train on (hidden_states[L]); needed when the store holds several")
    p.add_argument("--keep-outliers", action="store_true",
                   help="with --store: keep rows whose norm exceeds 10x the median (attention sinks; left out by default)")
    p.add_argument("--key", default=None, help="tensor name inside a .safetensors file holding several")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoint/, metrics.jsonl, curves.png, manifest.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint with its saved settings; "
                        "--steps/--epochs given with it extend the run, reporting options may change, others are ignored")
    _add_training_options(p)


def _run_train(args, argv) -> int:
    from ..data.sources import load_activations, split_rows
    from ..io import file_fingerprint
    from ..training.run import train_bae

    bae, train, loss = _configs(args, argv)
    if args.store:
        from ..data.store import ActivationStore

        store = ActivationStore(args.store)
        layer = store.default_layer(args.layer)
        tr, va = store.split(train.val_fraction, train.seed, layer, keep_outliers=args.keep_outliers)  # by document
        inputs = {"store": str(args.store), "layer": layer, "store_settings": store.manifest.get("settings"),
                  "outliers_left_out": 0 if args.keep_outliers else int(store.outliers(layer).sum()),
                  "train_tokens": tr.n_rows, "val_tokens": va.n_rows}
    else:
        x = load_activations(args.activations, args.key)
        tr, va = split_rows(x, train.val_fraction, train.seed)
        inputs = {"activations": str(args.activations), "sha256": file_fingerprint(args.activations),
                  "rows": int(x.shape[0]), "dim": int(x.shape[1])}
    from ..training.trainer import Trainer

    overrides = {name: getattr(train, name) for name in _explicit(argv, train) & Trainer.RESUMABLE_OVERRIDES}
    ignored = _explicit(argv, bae, train, loss) - Trainer.RESUMABLE_OVERRIDES
    if args.resume and ignored:
        print(f"bitlens: note: resuming uses the checkpoint's settings; ignored: {', '.join(sorted(ignored))}",
              file=sys.stderr)
    _, stats = train_bae(tr, va, args.out, bae, train, loss, resume=args.resume, resume_overrides=overrides,
                         inputs=inputs)
    target = f" (target {stats['target_fvu']:g})" if "target_fvu" in stats else " (fixed weights)"
    print(f"trained to step {stats['step']}: FVU {stats.get('fvu', float('nan')):.4f}{target}, "
          f"entropy {stats.get('entropy_bits', float('nan')):.2f} bits, L0 {stats.get('l0', float('nan')):.1f}; "
          f"checkpoint in {args.out}/checkpoint")
    return 0


# ---- synth -----------------------------------------------------------------------------------------------------
def _register_synth(p) -> None:
    from ..analysis.synth_benchmark import SynthConfig

    p.add_argument("--out", default="runs/synth", metavar="DIR", help="output folder (synth.json, synth.png, one run per r)")
    from ..training.config import synth_loss

    p.add_arguments(SynthConfig, dest="synth")
    _add_training_options(p, synth_loss())  # --target-fvu: above the family's noise floor (SYNTH_TARGET_FVU)


def _run_synth(args, argv) -> int:
    from ..analysis.synth_benchmark import run_synth

    bae, train, loss = _configs(args, argv)
    args.synth.bit_list()  # validate before any work
    summary = run_synth(args.synth, args.out, bae, train, loss)
    print(f"family {args.synth.family}: max |estimated - true| = {summary['max_abs_error_bits']:.2f} bits, "
          f"max relative error {summary['max_rel_error']:.1%}, max FVU = {summary['max_fvu']:.4f} "
          f"(target {summary['target_fvu_above_floor']:g} above the noise floor); "
          f"wrote {args.out}/synth.json and {args.out}/synth.png")
    return 0


# ---- extract ---------------------------------------------------------------------------------------------------
def _register_extract(p) -> None:
    from ..data.extract import ExtractConfig

    p.add_arguments(ExtractConfig, dest="extract")


def _run_extract(args, argv) -> int:
    from ..data.extract import extract_main

    extract_main(args.extract)
    return 0


# ---- demo ------------------------------------------------------------------------------------------------------
def _register_demo(p) -> None:
    from ..demo import DemoConfig

    p.add_arguments(DemoConfig, dest="demo")


def _run_demo(args, argv) -> int:
    from ..demo import run_demo

    run_demo(args.demo)
    return 0


# ---- compare ---------------------------------------------------------------------------------------------------
def _register_compare(p) -> None:
    from ..compare import CompareConfig

    p.add_arguments(CompareConfig, dest="compare")


def _run_compare(args, argv) -> int:
    from ..compare import run_compare

    summary = run_compare(args.compare)
    print(f"wrote {args.compare.out}/compare.json, compare.md, frequencies.png, units.png "
          f"({summary['seconds_this_run']['total']:.0f}s)")
    return 0


# ---- interpret -------------------------------------------------------------------------------------------------
def _register_interpret(p) -> None:
    from ..interpretation.config import InterpretConfig

    p.add_arguments(InterpretConfig, dest="interpret")


def _run_interpret(args, argv) -> int:
    from ..interpretation.pipeline import run_interpret

    summary = run_interpret(args.interpret)
    if "n_scored" in summary:
        print(f"{summary['n_scored']} of {summary['n_features']} features scored; interpretable by threshold "
              f"{summary['n_interpretable']}; mean {summary['score_name']} {summary['mean_score']}; "
              f"{summary['usage']['calls']} LLM calls, {summary['usage']['cache_hits']} cache hits; "
              f"wrote {args.interpret.out}/summary.json")
    return 0


# ---- entropy layers | positions | icl ----------------------------------------------------------------------------
def _entropy_analyses():
    from ..analysis.icl import ICLConfig, run_icl
    from ..analysis.layers import LayersConfig, run_layers
    from ..analysis.positions import PositionsConfig, run_positions
    from ..experiments.rd import RDConfig, run_rd

    return {
        "layers": ("Entropy, FVU and L0 of each layer, one BAE per layer on the same tokens.", LayersConfig,
                   run_layers),
        "positions": ("Entropy against token position per layer, with the saturation position and plateau.",
                      PositionsConfig, run_positions),
        "icl": ("Entropy of the last prompt token against the number of ICL demonstrations, with ICL accuracy.",
                ICLConfig, run_icl),
        "rd": ("Entropy-distortion curve: one BAE per target FVU and seed, bits vs achieved FVU, the knee and the "
               "Gaussian rate-distortion reference.", RDConfig, run_rd),
    }


def _register_entropy(p) -> None:
    import simple_parsing as sp

    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", parser_class=sp.ArgumentParser, required=True)
    for name, (help_text, config_cls, _) in _entropy_analyses().items():
        child = sub.add_parser(name, help=help_text, description=help_text,
                               add_option_string_dash_variants=sp.DashVariant.UNDERSCORE_AND_DASH,
                               formatter_class=sp.SimpleHelpFormatter)
        child.add_arguments(config_cls, dest="cfg")


def _run_entropy(args, argv) -> int:
    _, _, run = _entropy_analyses()[args.analysis]
    summary = run(args.cfg)
    out = args.cfg.out
    if args.analysis == "layers":
        for row in summary["layers"]:
            print(f"layer {row['layer']:>3}: {row['entropy_bits']:7.1f} bits "
                  f"(corrected {row['entropy_bits_corrected']:.1f}), "
                  f"FVU {row['fvu']:.3f}, L0 {row['l0']:.1f}")
        print(f"wrote {out}/layers.json and {out}/layers.png")
    elif args.analysis == "rd":
        for p in summary["points"]:
            print(f"target {p['target_fvu']:.3f}: FVU {p['fvu']:.4f} ± {p['fvu_std']:.4f}, "
                  f"{p['entropy_bits']:.1f} ± {p['entropy_bits_std']:.1f} bits, {p['ratio_to_gaussian']:.2f}x the "
                  f"Gaussian R(D), dead {p['dead']:.0f}, constant-on {p['constant_on']:.0f}")
        knee = ("none" if summary["knee_bits"] is None
                else f"{summary['knee_bits']:.1f} bits at FVU {summary['knee_fvu']:.3f}")
        print(f"knee: {knee}; wrote {out}/rd.json and {out}/rd.png")
    elif args.analysis == "positions":
        for entry in summary["layers"]:
            curve = ", ".join(f"{c['position']}:{c['entropy_bits']:.0f}" for c in entry["positions"])
            print(f"layer {entry['layer']:>3}: saturation at {entry['saturation_position']}, plateau "
                  f"{entry['plateau_bits']:.1f} bits  [{curve}]")
        print(f"wrote {out}/positions.json and {out}/positions.png")
    else:
        for name, task in summary["tasks"].items():
            acc = ", ".join(f"k={a['k']}:{a['accuracy']:.2f}" for a in task["accuracy"])
            print(f"{name}: accuracy {acc}")
            for entry in task["layers"]:
                print(f"  layer {entry['layer']:>3}: " + ", ".join(f"k={c['k']}:{c['entropy_bits']:.1f}"
                                                              for c in entry["curve"]))
        print(f"wrote {out}/icl.json and {out}/icl.png")
    return 0


# ---- compress / decompress ---------------------------------------------------------------------------------------
def _register_compress(p) -> None:
    from ..analysis.compress_run import CompressConfig

    p.add_arguments(CompressConfig, dest="cfg")


def _run_compress(args, argv) -> int:
    from ..analysis.compress_run import run_compress

    summary = run_compress(args.cfg)
    for row in summary["rows"]:
        print(f"{row['format']:<48} {row['bits_per_vector']:10.1f} bits/vector  MSE {row['mse']:.4g}  "
              f"FVU {row['fvu']:.4f}  cosine {row['cosine']:.4f}")
    print(f"round trip exact: {summary['round_trip_exact']}; wrote {args.cfg.out}/compress.json")
    return 0


def _register_decompress(p) -> None:
    from ..analysis.compress_run import DecompressConfig

    p.add_arguments(DecompressConfig, dest="cfg")


def _run_decompress(args, argv) -> int:
    from ..analysis.compress_run import run_decompress

    path = run_decompress(args.cfg)
    print(f"wrote {path}")
    return 0


COMMANDS = [
    Command("extract", "Extract hidden states of a causal LM over a corpus into an activation store.",
            _register_extract, _run_extract),
    Command("train", "Train a Binary Autoencoder on an activation file.", _register_train, _run_train),
    Command("synth", "Synthetic known-entropy benchmark: one BAE per r bits, estimated vs true entropy.",
            _register_synth, _run_synth),
    Command("demo", "The whole pipeline on the embedded model and corpus: extract, train a BAE, report features.",
            _register_demo, _run_demo),
    Command("compare", "Train the BAE and the SAE baselines at the same width on one store and layer; compare "
            "statistics and splicing.", _register_compare, _run_compare),
    Command("interpret", "Explain coder features with an LLM and score the explanations (default or comsem mode).",
            _register_interpret, _run_interpret),
    Command("entropy", "Information analyses: entropy across layers, token positions and ICL demonstrations, and "
            "the entropy-distortion curve (rd).",
            _register_entropy, _run_entropy),
    Command("compress", "Store hidden states as BAE codes (bit-packed and sparse files) and report bits vs error.",
            _register_compress, _run_compress),
    Command("decompress", "Decode a BAE code file back to hidden states (.npy).", _register_decompress,
            _run_decompress),
]
BY_NAME = {c.name: c for c in COMMANDS}
