"""The `rbwa` command line: train | demo | reproduce | status | report | posthoc | merge | sample | migrate.

Argument parsing only: each command calls one function of the part of the package it belongs to. User errors print
one `error: ...` line and exit with status 2 before any work starts; a diverged run exits with status 3.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, fields
from typing import Any

from rbwa.errors import UserError
from rbwa.training.config import CHOICES, DEFAULT_POSTHOC_FAMILIES, HELP, POSTHOC_FAMILIES, TrainConfig

EXIT_USER_ERROR, EXIT_DIVERGED = 2, 3


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one `error:` line."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


def add_config_flags(parser: argparse.ArgumentParser, exclude: Sequence[str] = (),
                     preset_keys: Sequence[str] = ()) -> None:
    """One flag per TrainConfig field; the defaults stay in TrainConfig (flags default to None = not given). A key
    in ``preset_keys`` defaults to what the chosen preset sets, and its help says so."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else []
        base = args[0] if args else hint
        default = f.default if f.default is not MISSING else None
        help_text = HELP[f.name] if "(default:" in HELP[f.name] else (
            f"{HELP[f.name]} (default: the preset's)" if f.name in preset_keys
            else f"{HELP[f.name]} (default: {default})")
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(base) is list:
            parser.add_argument(flag, nargs="+", type=int, default=None, metavar="EPOCH", help=help_text)
        else:
            # choices stay validated by config.validate (one error line for a bad value, from flags and YAML alike)
            metavar = "{" + ",".join(CHOICES[f.name]) + "}" if f.name in CHOICES else None
            parser.add_argument(flag, type=base, default=None, metavar=metavar, help=help_text)


def given(ns: argparse.Namespace, exclude: Sequence[str] = ()) -> dict[str, Any]:
    names = {f.name for f in fields(TrainConfig)} - set(exclude)
    return {k: v for k, v in vars(ns).items() if k in names and v is not None}


def cmd_train(ns: argparse.Namespace) -> int:
    from rbwa.training.command import train_command

    train_command(ns.preset, ns.config, given(ns), resume=ns.resume, quiet=ns.quiet)
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from rbwa.demo import demo

    demo(ns.out, epochs=ns.epochs, seed=ns.seed)
    return 0


def cmd_reproduce(ns: argparse.Namespace) -> int:
    from rbwa.experiments.runner import reproduce_command

    reproduce_command(ns.experiment, ns.preset, ns.seeds, ns.out, given(ns, exclude=("out",)), dry_run=ns.dry_run,
                      only=ns.only, launcher=ns.launcher, cpus_per_run=ns.cpus_per_run,
                      gpus_per_run=ns.gpus_per_run, ray_address=ns.ray_address, slurm_partition=ns.slurm_partition,
                      slurm_time=ns.slurm_time, slurm_parallel=ns.slurm_parallel, slurm_extra=ns.slurm_extra)
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    from rbwa.experiments.runner import print_status

    print_status(ns.out)
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from rbwa.analysis.report import write_report

    print(f"wrote {write_report(ns.runs, ns.out or ns.runs)}")
    return 0


def cmd_posthoc(ns: argparse.Namespace) -> int:
    from rbwa.analysis.posthoc import posthoc_command

    folder = posthoc_command(ns.run, ns.dataset, ns.data_dir, ns.cache_dir, ns.lawa, ns.half_lives, ns.families,
                             ns.wsm_windows, ns.gammas, ns.bn_images, ns.device, ns.out, ns.quiet)
    print(f"wrote {folder}")
    return 0


def cmd_merge(ns: argparse.Namespace) -> int:
    from rbwa.checkpoints.merge import merge_command

    merge_command(ns.checkpoints, ns.out, ns.swa_from, ns.lawa, ns.ema_half_life, wsm=ns.wsm, window=ns.window,
                  power_gamma=ns.power_gamma, in_order=ns.in_order)
    return 0


def cmd_sample(ns: argparse.Namespace) -> int:
    from rbwa.training.sample import sample

    print(sample(ns.run, ns.tokens, ns.prompt, ns.seed, ns.average, ns.dataset, ns.data_dir, ns.temperature))
    return 0


def cmd_migrate(ns: argparse.Namespace) -> int:
    from rbwa.experiments.migrate import migrate_command

    migrate_command(ns.runs, ns.dataset)
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per command, each calling its one function (``cmd_*``)."""
    p = Parser(prog="rbwa", description="Recurrent Batch Weight Averaging: train, reproduce the paper, report.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_add_train, _add_demo, _add_reproduce, _add_status, _add_report, _add_posthoc, _add_merge, _add_sample,
                _add_migrate):
        add(sub)
    return p


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train one model with one method; writes a run directory")
    t.add_argument("--preset", default=None, metavar="NAME",
                   help="start from a preset's settings, as rbwa reproduce does: the scale, not the model (cpu-lm: "
                        "nanoGPT's CPU GPT's sizes and AdamW settings, with --dataset shakespeare --model gpt "
                        "--optimizer adamw; cpu-full, cpu, paper, smoke); --config and flags win over it")
    t.add_argument("--config", help="YAML file of config keys (flags given on the command line win)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(t)
    t.set_defaults(func=cmd_train)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="offline, ~2 minutes on 2 CPU cores: sgd, rbwa, rbwa-e, swa on digits")
    d.add_argument("--out", default="rbwa-demo", help="directory for the runs, table and plot (default: rbwa-demo)")
    d.add_argument("--epochs", type=int, default=None, help="epochs per method (default: the demo's own)")
    d.add_argument("--seed", type=int, default=0, help="seed of the initial weights and batch order (default: 0)")
    d.set_defaults(func=cmd_demo)


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    from rbwa.experiments.grids import EXPERIMENTS
    from rbwa.training.config import PRESETS

    r = sub.add_parser("reproduce", help="run one of the paper's experiments as a resumable grid of runs")
    r.add_argument("experiment", help=f"one of: {', '.join(EXPERIMENTS)}")
    r.add_argument("--preset", default="cpu", metavar="{" + ",".join(PRESETS) + "}",
                   help="scale of the protocol: paper (full, for GPUs), cpu-full (all images, 2 cores), cpu (a "
                        "5,000-image subset), smoke (seconds) (default: cpu)")
    r.add_argument("--seeds", type=int, default=3, help="seeds per grid point (default: 3)")
    r.add_argument("--out", default="runs", help="root directory of the sweep (default: runs)")
    r.add_argument("--dry-run", action="store_true", help="list the runs without training")
    r.add_argument("--only", nargs="+", default=None, metavar="SETTING",
                   help="train only these settings of the grid (models, or table1's batch sizes), e.g. the cheap "
                        "ones first; the manifest still lists every run (default: all)")
    r.add_argument("--launcher", default="local", choices=("local", "ray", "slurm"),
                   help="where runs train: local (here, one after another), ray (Ray tasks, local or --ray-address), "
                        "slurm (a submitit job array; returns once submitted) (default: local)")
    r.add_argument("--cpus-per-run", type=float, default=None,
                   help="CPUs of each run; also its torch threads (default: torch's own; 1 on Ray)")
    r.add_argument("--gpus-per-run", type=float, default=None,
                   help="GPUs of each run; a fraction packs runs on one GPU on Ray, e.g. 0.25 (default: 0)")
    r.add_argument("--ray-address", default=None, help="join this running Ray cluster (default: start a local one)")
    r.add_argument("--slurm-partition", default=None, help="Slurm partition to submit to (default: the cluster's)")
    r.add_argument("--slurm-time", type=int, default=240, help="time limit of each run's job, minutes (default: 240)")
    r.add_argument("--slurm-parallel", type=int, default=None, help="at most this many jobs of the array at once")
    r.add_argument("--slurm-extra", nargs="*", metavar="KEY=VALUE",
                   help="more sbatch options, e.g. qos=high account=lab (the escape hatch)")
    add_config_flags(r, exclude=("out", "seed", "method", "model", "batch_size"),
                     preset_keys=sorted({k for values in PRESETS.values() for k in values}))
    r.set_defaults(func=cmd_reproduce)


def _add_status(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="how far a sweep got: finished, running, interrupted, not started, diverged")
    st.add_argument("out", help="root directory of a sweep (as given to `rbwa reproduce --out`)")
    st.set_defaults(func=cmd_status)


def _add_report(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("report", help="turn run directories into figures, tables and verdicts")
    rp.add_argument("runs", help="root directory of a sweep (as given to `rbwa reproduce --out`)")
    rp.add_argument("--out", default=None, help="where to write report.md, results.csv and PNGs (default: RUNS)")
    rp.set_defaults(func=cmd_report)


def _add_posthoc(sub: argparse._SubParsersAction) -> None:
    ph = sub.add_parser("posthoc", help="side averages chosen after training, from a run's snapshots (SWA, LAWA, EMA)")
    ph.add_argument("run", help="a finished run directory with snapshots (rbwa train --snapshots-per-epoch K)")
    ph.add_argument("--dataset", default=None, help="folder:PATH of the run's image folder, or text:PATH of its text "
                                                    "file (their paths are not recorded)")
    ph.add_argument("--data-dir", default=None, help="where the official CIFAR data lies (as for rbwa train)")
    ph.add_argument("--cache-dir", default=None, help="where decoded image folders are cached (as for rbwa train)")
    ph.add_argument("--lawa", type=int, nargs="+", default=None, metavar="K",
                    help="LAWA windows, in epoch-end snapshots (default: every window)")
    ph.add_argument("--half-lives", type=float, nargs="+", default=None, metavar="STEPS",
                    help="EMA half-lives, in steps (default: 1/8 to 8 epochs, doubling)")
    ph.add_argument("--families", nargs="+", default=list(DEFAULT_POSTHOC_FAMILIES), choices=POSTHOC_FAMILIES,
                    metavar="FAMILY", help=f"which averages to evaluate, of {', '.join(POSTHOC_FAMILIES)} (default: "
                                           f"{' '.join(DEFAULT_POSTHOC_FAMILIES)}"
                         "); the final weights alone are always evaluated")
    ph.add_argument("--wsm-windows", type=int, nargs="+", default=None, metavar="K",
                    help="WSM windows, in snapshot intervals after the start epoch, each merged under a linear, cosine "
                         "and 1-sqrt decay (default: 2, 4, 8, ...)")
    ph.add_argument("--gammas", type=float, nargs="+", default=None, metavar="G",
                    help="the power EMA's exponents gamma (default: 1, 3, 7, 15, 31, 63: sigma_rel 0.24 to 0.015)")
    ph.add_argument("--bn-images", type=int, default=None,
                    help="re-estimate BatchNorm on a class-balanced subset of this many training images (default: "
                         "all, as the trainer does)")
    ph.add_argument("--device", default="cpu", metavar="{" + ",".join(CHOICES["device"]) + "}",
                    help="where the candidates are evaluated (default: cpu)")
    ph.add_argument("--out", default=None, help="where to write posthoc.csv/.md/.png (default: RUN/posthoc)")
    ph.add_argument("--quiet", action="store_true", help="no progress bar")
    ph.set_defaults(func=cmd_posthoc)


def _add_merge(sub: argparse._SubParsersAction) -> None:
    mg = sub.add_parser("merge", help="average a series of any trainer's checkpoints (SWA, LAWA, EMA), written in "
                                      "their own format")
    mg.add_argument("checkpoints", nargs="+",
                    help="checkpoint files or folders, or directories holding them (an HF output_dir, a folder of "
                         "Lightning .ckpt or torch.save files, of torch.distributed.checkpoint folders, a run's "
                         "snapshots); ordered by the step each records, else by the step its name states (step-N, "
                         "checkpoint-N, or a single number)")
    mg.add_argument("--swa-from", type=int, default=None, metavar="STEP",
                    help="the uniform mean of every checkpoint from this step on (a step, >= 0)")
    mg.add_argument("--lawa", type=int, default=None, metavar="K",
                    help="the uniform mean of the last K checkpoints of the series (K >= 1), whatever their spacing; "
                         "not rbwa posthoc's LAWA, which takes the last K epoch ends")
    mg.add_argument("--ema-half-life", type=float, default=None, metavar="STEPS",
                    help="an exponential moving average of the series with this half-life in steps (> 0); it starts "
                         "from the first checkpoint, which stands for everything before it: with a half-life long "
                         "next to the series it weighs the most (10 checkpoints 500 steps apart, half-life 5000: "
                         "0.536)")
    mg.add_argument("--wsm", default=None, metavar="SHAPE",
                    help="WSM (Tian et al. 2026): the merge that equals taking the last --window K checkpoint "
                         "intervals again under a decay of this shape (linear, cosine, 1-sqrt) where gradients do not "
                         "depend on the weights; linear is the uniform mean of the last K checkpoints")
    mg.add_argument("--window", type=int, default=None, metavar="K",
                    help="with --wsm: the last K checkpoint intervals (K + 1 checkpoints, evenly spaced)")
    mg.add_argument("--power-gamma", type=float, default=None, metavar="G",
                    help="EDM2's power-function EMA (Karras et al. 2024): the weights after step t weighted in "
                         "proportion to t^G (G > 0; sigma_rel 0.10 is G = 6.94, 0.05 is G = 16.97); each checkpoint "
                         "stands for the steps since the one before it")
    mg.add_argument("--in-order", action="store_true",
                    help="take the checkpoints in the order given, oldest first, for a series whose steps are not "
                         "recorded or named; each path is one checkpoint, and only --lawa applies (steps unknown)")
    mg.add_argument("--out", required=True,
                    help="where to write the average (a new path), in the input's format; written whole or not at all")
    mg.set_defaults(func=cmd_merge)


def _add_sample(sub: argparse._SubParsersAction) -> None:
    sa = sub.add_parser("sample", help="text from a trained GPT run (--model gpt), seeded and deterministic")
    sa.add_argument("run", help="a run directory of a language model (rbwa train --model gpt)")
    sa.add_argument("--tokens", type=int, default=500, help="characters to generate (default: 500)")
    sa.add_argument("--prompt", default="\n", help="text the sample continues (default: a new line)")
    sa.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    sa.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, > 0 (default: 1.0)")
    sa.add_argument("--average", action="store_true",
                    help="sample from the run's average (a side copy, or rbwa never written back), not its weights")
    sa.add_argument("--dataset", default=None, help="text:PATH of the run's text file (its path is not recorded)")
    sa.add_argument("--data-dir", default=None, help="where tinyshakespeare/input.txt lies (as for rbwa train)")
    sa.set_defaults(func=cmd_sample)


def _add_migrate(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("migrate", help="rename the runs of a sweep made before rbwa 0.2 (data named by path)")
    m.add_argument("runs", help="root directory of a sweep (as given to `rbwa reproduce --out`)")
    m.add_argument("--dataset", default=None,
                   help="folder:PATH of the data on this machine, where the path the runs recorded is gone")
    m.set_defaults(func=cmd_migrate)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ns = parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad command line already reported in one line
        return int(e.code or 0)
    try:
        return ns.func(ns)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as e:
        from rbwa.training.loop import Diverged

        if isinstance(e, Diverged):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_DIVERGED
        raise
