"""The late-start twin (issue 18, "a cheaper probe") on the demo: fit B from fit A's state at t0.

    nice -n 10 env OMP_NUM_THREADS=1 python bench/late_start.py            # t0 = 0, 100, 200, 300
    nice -n 10 env OMP_NUM_THREADS=1 python bench/late_start.py --cases noise-kate-15,noise-f16-15 --t0 300,150

The README's demo (64 px astronaut, Gaussian noise sigma 25/255 clipped, seed 0, cap 1500, the
denoising defaults: twin probe, risk rule) restored once per t0 (``StopConfig.twin_start``),
same seed, with ``stop="osc"``; and plain DIP (``pseudo_noise_std=0``) run to the cap once for
the oracle: fit A is the plain-DIP fit of the seed whatever t0 (checked here on every run's
recorded PSNR curves), so its best PSNR of each output kind over the cap is the oracle of every
row. Per t0: the returned iteration and output, iterations run, the returned image's PSNR, the
gap to the oracle of the same output kind, the iterations fit B trained (counted by the engine,
``Restoration.fit_iterations``) and the wall time. Writes bench/results/late-start-<machine>.md
and .json. Wall times are only comparable on an idle machine: the 1-minute load average before
the script (other processes) and before each run are recorded, and a run that started above
``--max-load`` is flagged.

With ``--cases`` (issue 18: the choice of the default t0 on the selection half), the recorded twin
runs of those experiments (bench/results/paper/<scale>/NAME-s<seed>.json + .npz, written by
``bench/paper.py run``) instead: the observation, clean image, task options, preset and cap are
made by bench/paper.py's own experiment (imported), and ``oscfast.restore`` runs with the task's
default stop (``StopConfig()``'s defaults, as the recorder watched them), the recording's seed and
precision, ``--threads`` torch threads and ``twin_start=t0``, once per t0 of ``--t0``. Fit A never
sees the probe, so it is the recording's plain-DIP fit on the machine that recorded it: the live
fit-A PSNR curves are compared with the recording's (index 0 of ``psnr`` / ``psnr_ema``) over the
iterations both have, and the gap is to the recording's plain-DIP oracle (best raw or averaged
PSNR of fit A, the metric of bench/rules_study.py's ``metric_of``, final step applied). On another
CPU the float kernels round differently from the first iteration on and fit A is another plain-DIP
trajectory: ``--oracle`` then runs plain DIP to the cap here (once per case, kept in the .npz
beside the results; a live run that reached the cap serves as well), every live fit A is checked
against it, and the gap to its oracle is reported beside the recording's. The t0 = 0 row of
each case is not run: it is the default rule replayed on the recording (rules_study's ``replay``
with ``default_candidate``), as the table says. Rows land in bench/results/late-start-recorded-
<machine>.md and .json after each live run; a rerun keeps the rows there and runs only the
(case, t0) pairs they lack (``--redo`` runs them again). ``--t0 0`` runs t0 = 0 live as well (a
row beside the replay: the reference of the live rows when fit A is not the recording's).
"""
from __future__ import annotations

import os

#: the other processes' load, read before this process imports torch (whose import is work of its own)
LOAD_AT_START = os.getloadavg()[0]

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_header, machine_tag, write_results  # noqa: E402

from oscfast import restore
from oscfast.config import StopConfig
from oscfast.degradations import add_gaussian_noise
from oscfast.demo import DEMO_MAX_ITERATIONS, DEMO_SIZE, demo_image

logger = logging.getLogger("bench.late_start")

SIGMA = 25 / 255
SEED = 0


@dataclass(frozen=True)
class Row:
    """One late-start twin run of the demo."""

    twin_start: int
    stop_iteration: int
    output: str
    iterations_run: int
    psnr: float
    curve_psnr: float
    gap_db: float
    fit_b_iterations: int
    fit_iterations: int
    seconds: float
    loop_seconds: float
    load_before: float
    fit_a_matches_plain: bool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 100, 200, 300], help="the values of t0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="a run that starts above this 1-minute load average (other processes) is flagged")
    parser.add_argument("--out-dir", type=Path, default=None)
    recorded = parser.add_argument_group("recorded runs (issue 18 on the selection half; see above)")
    recorded.add_argument("--cases", type=_names, default=None,
                          help="comma-separated experiments of bench/paper.py with a recorded twin run: this mode")
    recorded.add_argument("--t0", type=_starts, default=None, help="comma-separated values of t0 to run live "
                          "(a t0 = 0 row replayed from the recording is always there; 0 here runs it live too); "
                          "default 300")
    recorded.add_argument("--seed", type=int, default=0, help="the recording's seed (NAME-s<seed>.json)")
    recorded.add_argument("--scale", choices=("mini", "full"), default="mini", help="the recordings' folder")
    recorded.add_argument("--threads", type=int, default=1, help="torch threads of the live runs")
    recorded.add_argument("--oracle", action="store_true",
                          help="first run plain DIP to the cap for cases with no full fit-A curve on this machine yet "
                               "(the oracle of the live rows when fit A differs from the recording's)")
    recorded.add_argument("--set", action="append", metavar="NAME=VALUE",
                          help="a StopConfig field for the live runs and the replay (repeatable; default: today's "
                               "StopConfig() defaults); each row records the settings it ran with")
    recorded.add_argument("--redo", action="store_true",
                          help="run (case, t0) pairs again that the results file already holds")
    recorded.add_argument("--max-iterations", type=int, default=None,
                          help="smoke tests only: cap the live runs here instead of the recording's cap (flagged)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cases is not None:
        args.t0 = args.t0 or [300]
        return recorded_main(args, argv)
    if args.t0 is not None or args.max_iterations is not None or args.redo or args.oracle or args.set:
        parser.error("--t0, --max-iterations, --oracle, --set and --redo go with --cases (the demo takes --starts)")
    clean = demo_image(DEMO_SIZE)
    noisy = add_gaussian_noise(clean, SIGMA, seed=SEED)
    common = {"task": "denoise", "reference": clean, "max_iterations": DEMO_MAX_ITERATIONS, "seed": SEED,
              "device": args.device, "progress": False}

    load_plain = os.getloadavg()[0]
    start = time.perf_counter()
    plain = restore(noisy, pseudo_noise_std=0, **common)  # plain DIP to the cap: the oracle's curves
    plain_seconds = time.perf_counter() - start
    curves = {"raw": plain.history.psnr_raw, "ema": plain.history.psnr_ema}
    oracle = {kind: float(np.nanmax(curve)) for kind, curve in curves.items()}
    peak = {kind: int(np.nanargmax(curve)) for kind, curve in curves.items()}
    logger.info("plain DIP to %d: best raw %.2f dB (it. %d), best ema %.2f dB (it. %d), %.0f s",
                plain.iterations_run, oracle["raw"], peak["raw"], oracle["ema"], peak["ema"], plain_seconds)

    rows: list[Row] = []
    for t0 in args.starts:
        load = os.getloadavg()[0]
        start = time.perf_counter()
        result = restore(noisy, stop_config=StopConfig(twin_start=t0), **common)
        seconds = time.perf_counter() - start
        kind = result.output
        done = result.iterations_run
        same_a = all(np.array_equal(getattr(result.history, f"psnr_{k}"), curves[k][:done]) for k in ("raw", "ema"))
        curve_psnr = float(curves[kind][result.stop_iteration])
        rows.append(Row(
            twin_start=t0, stop_iteration=result.stop_iteration, output=kind, iterations_run=done,
            psnr=float(result.psnr), curve_psnr=curve_psnr, gap_db=oracle[kind] - curve_psnr,
            fit_b_iterations=result.fit_iterations[1], fit_iterations=sum(result.fit_iterations), seconds=seconds,
            loop_seconds=result.seconds, load_before=round(load, 2), fit_a_matches_plain=same_a,
        ))
        logger.info("t0 %d: %s", t0, rows[-1])

    info = machine()
    info["load_average_1m_before"] = round(LOAD_AT_START, 2)
    info["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    loaded = LOAD_AT_START > args.max_load or any(row.load_before > args.max_load for row in rows)
    markdown = _markdown(rows, info, oracle, peak, plain_seconds, load_plain, loaded, args, argv)
    name = f"late-start-{machine_tag(info)}"
    payload = {"machine": info, "flagged": loaded, "torch_threads": torch.get_num_threads(), "sigma": SIGMA, "seed": SEED,
               "size": DEMO_SIZE, "cap": DEMO_MAX_ITERATIONS, "oracle": oracle, "oracle_iteration": peak,
               "plain_seconds": plain_seconds, "plain_load_before": round(load_plain, 2), "rows": [asdict(r) for r in rows]}
    path = write_results(name, markdown, payload, args.out_dir)
    logger.info("%s\nwrote %s%s", markdown, path, " (FLAGGED: loaded machine)" if loaded else "")
    return 0


def _markdown(rows: list[Row], info: dict, oracle: dict[str, float], peak: dict[str, int], plain_seconds: float,
              load_plain: float, loaded: bool, args: argparse.Namespace, argv: list[str] | None) -> str:
    flag = (f"**FLAGGED: the 1-minute load average was above {args.max_load} before the script or a run (other processes "
            "shared the CPU): the wall times are not idle-machine times; the iteration counts are exact.**\n\n" if loaded else "")
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# The late-start twin on the demo (issue 18, a cheaper probe)", "", flag.rstrip("\n"), "" if flag else None,
        machine_header(info),
        f"- torch threads: {torch.get_num_threads()}",
        f"- command: `python bench/late_start.py{' ' + command if command else ''}`",
        "",
        f"The demo: {DEMO_SIZE} px astronaut, Gaussian noise sigma 25/255 clipped, seed {SEED}, cap {DEMO_MAX_ITERATIONS}, "
        "the denoising defaults (twin probe, risk rule, evidence wait, level cut). Fit B starts at t0 from a copy of fit "
        "A's state (`StopConfig(twin_start=t0)`); before t0 only fit A trains and P_twin is 0. Plain-DIP oracle (fit A, "
        f"identical for every t0, run to the cap once in {plain_seconds:.0f} s, load {load_plain:.2f} before): raw "
        f"{oracle['raw']:.2f} dB (it. {peak['raw']}), ema {oracle['ema']:.2f} dB (it. {peak['ema']}). The gap is to the "
        "oracle of the returned output's kind, both read on the same recorded PSNR curve; 'PSNR' is the returned "
        "image's (after clamping, as `Restoration.psnr`). 'fit B its' are the iterations fit B trained (counted by the "
        "engine); 'fit its' both fits' together. Wall: the whole `restore` call; loop: the engine's loop.",
        "",
        "| t0 | returned it. (output) | iterations run | PSNR | gap dB | fit B its | fit its | wall s | loop s | "
        "load before | fit A = plain DIP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.twin_start} | {r.stop_iteration} ({r.output}) | {r.iterations_run} | {r.psnr:.2f} | "
                     f"{r.gap_db:.2f} | {r.fit_b_iterations} | {r.fit_iterations} | {r.seconds:.0f} | "
                     f"{r.loop_seconds:.0f} | {r.load_before:.2f} | {'yes' if r.fit_a_matches_plain else 'NO'} |")
    return "\n".join(line for line in lines if line is not None) + "\n"


# -- recorded runs (--cases) ----------------------------------------------------------------------
#: the name of the results of the recorded-runs mode (the machine tag is appended)
RECORDED_NAME = "late-start-recorded"
#: fit A of a recorded twin run (oscfast.evaluation.PLAIN)
PLAIN = 0
#: the PSNR curves of fit A compared and kept
CURVES = ("psnr", "psnr_ema")


@dataclass(frozen=True)
class RecordedRow:
    """One t0 on one recorded case: a live late-start run, or (t0 = 0) the replay of the recording.

    ``psnr`` is read on fit A's curve in the recording's metric at the returned iteration (the
    live run's own curve for live rows); ``image_psnr`` is the returned image's PSNR
    (``Restoration.psnr``, live rows only). ``rule_stop`` is where the rule fired (None: it did
    not, the run went to the cap); ``iterations_run`` what an engine runs (to the end of the sync
    block the rule fired in). ``fit_a_*``: the live fit-A PSNR curves (raw and averaged) against
    the recording's over the iterations both have. ``stop``: every ``StopConfig`` field the rule
    ran (or was replayed) with but ``twin_start`` (None: not recorded, rows of the first version)."""

    case: str
    half: str
    twin_start: int
    source: str
    cap: int
    stop_iteration: int
    output: str
    rule_stop: int | None
    iterations_run: int
    fit_b_iterations: int
    fit_iterations: int
    psnr: float
    image_psnr: float | None
    gap_db: float
    oracle: float
    metric: str
    noise_level: float
    fit_a_compared: int | None = None
    fit_a_max_abs_diff: float | None = None
    fit_a_identical: bool | None = None
    seconds: float | None = None
    loop_seconds: float | None = None
    load_before: float | None = None
    flagged: bool = False
    smoke: bool = False
    stop: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, int, str, str]:
        """(case, t0, source, stop settings): a row's place in the results."""
        return self.case, self.twin_start, self.source, _stop_key(self.stop)


def _names(text: str) -> list[str]:
    """A comma-separated list of names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no names given")
    return names


def _starts(text: str) -> list[int]:
    """A comma-separated list of t0 values, each >= 0."""
    try:
        starts = [int(value) for value in text.split(",") if value.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"t0 values are integers: {error}") from None
    if not starts or any(t0 < 0 for t0 in starts):
        raise argparse.ArgumentTypeError("give t0 values >= 0")
    return starts


def load_recording(folder: Path, name: str, seed: int) -> dict[str, Any]:
    """A recorded twin run: its JSON description with its per-iteration curves (``traces``, from
    the .npz beside it, as bench/rules_study.py loads them)."""
    path = folder / f"{name}-s{seed}.json"
    if not path.is_file() or not path.with_suffix(".npz").is_file():
        raise FileNotFoundError(f"no recorded twin run {path} (+ .npz): record it with bench/paper.py run --only {name}")
    run = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz")) as traces:
        run["traces"] = {key: traces[key] for key in traces.files}
    run["stem"] = path.stem
    return run


def replayed_row(run: dict[str, Any], half: str, stop: dict[str, Any]) -> RecordedRow:
    """The t0 = 0 row: the task's default rule replayed on the recording (bench/rules_study.py),
    with the stop settings ``stop`` (``StopConfig`` fields, as a live row records them)."""
    from rules_study import default_candidate, metric_of, replay  # noqa: PLC0415 - imports the engine

    from oscfast.evaluation import oracle  # noqa: PLC0415

    task, cap, metric = run["experiment"]["task"], int(run["cap"]), metric_of(run)
    settings = stop_config(stop)
    default = default_candidate(task)
    fields = {k: v for k, v in asdict(settings).items() if k != "twin_start"}
    candidate = replace(default, options={**default.options, **fields})
    sync_every = settings.sync_every
    result = replay(run, candidate, sync_every=sync_every)
    fired = result.iterations_run < cap
    run_to = min(cap, -(-result.iterations_run // sync_every) * sync_every)
    return RecordedRow(
        case=run["experiment"]["name"], half=half, twin_start=0, source="replay", cap=cap,
        stop_iteration=result.iteration, output=result.output, rule_stop=result.iterations_run if fired else None,
        iterations_run=run_to, fit_b_iterations=run_to, fit_iterations=2 * run_to, psnr=result.psnr, image_psnr=None,
        gap_db=result.gap_db, oracle=oracle(run["traces"], metric), metric=metric, noise_level=float(run["noise_level"]),
        stop=stop,
    )


def stop_config(stop: dict[str, Any]) -> StopConfig:
    """A ``StopConfig`` from recorded settings (JSON turns its tuples into lists)."""
    return StopConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stop.items()})


def stop_settings(overrides: list[str] | None) -> dict[str, Any]:
    """Every ``StopConfig`` field but ``twin_start``: today's defaults with ``--set NAME=VALUE``
    applied (values as Python literals)."""
    import ast  # noqa: PLC0415

    changes: dict[str, Any] = {}
    for item in overrides or []:
        name, _, text = item.partition("=")
        if name not in StopConfig.__dataclass_fields__ or name == "twin_start" or not text:
            raise SystemExit(f"--set {item!r}: give NAME=VALUE with NAME a StopConfig field other than twin_start")
        try:
            changes[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            changes[name] = text
    settings = asdict(StopConfig(**changes))
    settings.pop("twin_start")
    return settings


def _stop_key(stop: dict[str, Any] | None) -> str:
    return "" if stop is None else json.dumps(stop, sort_keys=True, default=list)


def _stop_label(stop: dict[str, Any] | None) -> str:
    """The settings that differ from today's ``StopConfig()`` (today's defaults: "defaults")."""
    if stop is None:
        return "not recorded"
    today = asdict(StopConfig())
    changed = [f"{k}={v}" for k, v in stop.items() if k in today and _stop_key({k: v}) != _stop_key({k: today[k]})]
    return ", ".join(changed) or "defaults"


def _experiment_inputs(run: dict[str, Any], data: Path, max_iterations: int | None) -> dict[str, Any]:
    """``restore``'s arguments for a recorded case, made by bench/paper.py's experiment as its
    recorder made them (observation, clean image as the reference, task options, preset), with
    the recording's seed, precision and cap (``max_iterations``: smoke tests only)."""
    import paper  # noqa: PLC0415 - the recorder, for its experiments

    from oscfast.presets import get_preset  # noqa: PLC0415

    name = run["experiment"]["name"]
    experiment = paper.BY_NAME[name]
    observation, clean, task_options = experiment.make(data, run["scale"])
    config = get_preset(experiment.task, experiment.preset)
    cap = int(run["cap"])
    if cap != paper.experiment_cap(experiment, config, run["scale"]):
        logger.warning("%s: recorded with cap %d, the recorder's cap is now %d: the recording's is used", name, cap,
                       paper.experiment_cap(experiment, config, run["scale"]))
    return {"image": observation, "task": experiment.task, "reference": clean, "seed": int(run["seed"]),
            "precision": run.get("precision", "fp32"), "config": replace(config, max_iterations=max_iterations or cap),
            "progress": False, **task_options, **experiment.options}


def live_row(run: dict[str, Any], half: str, t0: int, args: argparse.Namespace,
             data: Path) -> tuple[RecordedRow, dict[str, np.ndarray]]:
    """One live ``restore`` with the default stop (``--set`` applied) and ``twin_start=t0`` on a
    recorded case; the row, and the live fit-A PSNR curves with every signal of both fits
    (``signals-NAME``, (2, iterations run): for replays of other rule settings on this run)."""
    from rules_study import metric_of  # noqa: PLC0415

    from oscfast.evaluation import oracle  # noqa: PLC0415
    from oscfast.io import image_to_tensor  # noqa: PLC0415
    from oscfast.metrics import psnr_y_torch  # noqa: PLC0415

    inputs = _experiment_inputs(run, data, args.max_iterations)
    cap, live_cap, metric = int(run["cap"]), inputs["config"].max_iterations, metric_of(run)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    stop = stop_settings(args.set)
    result = restore(inputs.pop("image"), device=args.device, stop_config=replace(stop_config(stop), twin_start=t0),
                     **inputs)
    seconds = time.perf_counter() - start
    done, kind, traces = result.iterations_run, result.output, run["traces"]
    curves = {key: np.asarray(result.history.fits[key][PLAIN][:done], dtype=np.float32) for key in CURVES}
    signals = {f"signals-{key}": np.asarray(values, dtype=np.float32) for key, values in result.history.fits.items()}
    difference = max(float(np.max(np.abs(curves[key].astype(np.float64) - traces[key][PLAIN][:done]))) for key in CURVES)
    identical = all(np.array_equal(curves[key], traces[key][PLAIN][:done]) for key in CURVES)
    if metric == "psnr":
        value = float(curves["psnr_ema" if kind == "ema" else "psnr"][result.stop_iteration])
    else:  # the live run records RGB PSNR only: the metric (SR's Y-PSNR) of its returned image
        value = float(psnr_y_torch(image_to_tensor(inputs["reference"]), image_to_tensor(result.image)))
    fired = result.stop_reason not in ("cap", "interrupted")
    row = RecordedRow(
        case=run["experiment"]["name"], half=half, twin_start=t0, source="live", cap=live_cap,
        stop_iteration=result.stop_iteration, output=kind, rule_stop=result.rule_stop_iteration if fired else None,
        iterations_run=done, fit_b_iterations=result.fit_iterations[1], fit_iterations=sum(result.fit_iterations),
        psnr=value, image_psnr=float(result.psnr), gap_db=oracle(traces, metric) - value, oracle=oracle(traces, metric),
        metric=metric, noise_level=float(result.noise_level), fit_a_compared=done, fit_a_max_abs_diff=difference,
        fit_a_identical=identical, seconds=seconds, loop_seconds=result.seconds, load_before=round(load, 2),
        flagged=load > args.max_load or LOAD_AT_START > args.max_load, smoke=live_cap != cap, stop=stop,
    )
    return row, {**curves, **signals}


def plain_curves(run: dict[str, Any], args: argparse.Namespace, data: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Plain DIP (``pseudo_noise_std=0``) to the recording's cap on this machine: fit A's PSNR
    curves here (the oracle of this machine's live rows) and how long it took."""
    inputs = _experiment_inputs(run, data, args.max_iterations)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = restore(inputs.pop("image"), device=args.device, pseudo_noise_std=0, **inputs)
    seconds = time.perf_counter() - start
    curves = {key: np.asarray(result.history.fits[key][PLAIN], dtype=np.float32) for key in CURVES}
    return curves, {"seconds": seconds, "load_before": round(load, 2), "iterations_run": result.iterations_run,
                    "flagged": load > args.max_load or LOAD_AT_START > args.max_load}


def machine_reference(case: str, cap: int, curves: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]] | None:
    """Fit A's full PSNR curves on this machine for a case: its plain-DIP run, else a live run that
    reached the cap (fit A is plain DIP whatever t0); None when neither was run."""
    sources = [f"{case}-plain"] + sorted(key[: -len("-psnr")] for key in curves
                                         if key.startswith(f"{case}-t") and key.endswith("-psnr"))
    for source in sources:
        if f"{source}-psnr" in curves and curves[f"{source}-psnr"].shape == (cap,):
            return source, {key: curves[f"{source}-{key}"] for key in CURVES}
    return None


def recorded_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The ``--cases`` mode: the replayed t0 = 0 row and a live run per t0 of each recorded case
    (with ``--oracle``, first plain DIP to the cap where this machine has no full fit-A curve);
    the results are rewritten after every run."""
    from common import RESULTS, data_dir, halves  # noqa: PLC0415

    data = data_dir()
    if data is None:
        print("../shared/data not found (set OSCFAST_DATA): the observations cannot be made")
        return 1
    torch.set_num_threads(args.threads)
    folder = RESULTS / "paper" / args.scale
    stop = stop_settings(args.set)
    half_of = halves()
    info = machine()
    name = f"{RECORDED_NAME}-{machine_tag(info)}" + ("-smoke" if args.max_iterations else "")
    out = Path(args.out_dir) if args.out_dir else RESULTS
    earlier = _earlier_rows(out / f"{name}.json")
    # the cases of this invocation first, then those an earlier one ran (their rows stay in the table)
    cases = dict.fromkeys([*args.cases, *(key[0] for key in earlier)])
    runs = {case: load_recording(folder, case, args.seed) for case in cases}
    state = Recorded(name=name, out=out, info=info, args=args,
                     commands=[*_earlier(out / f"{name}.json", "commands", []),
                               "python bench/late_start.py " + " ".join(sys.argv[1:] if argv is None else argv)],
                     rows=earlier, plain=_earlier(out / f"{name}.json", "plain", {}),
                     curves=_load_curves(out / f"{name}.npz"), runs=runs)
    state.replay(half_of, stop)
    if args.oracle:
        for case in args.cases:
            run = runs[case]
            if machine_reference(case, args.max_iterations or int(run["cap"]), state.curves) is not None:
                logger.info("%s: this machine's full fit-A curve is there already", case)
                continue
            curves, meta = plain_curves(run, args, data)
            state.curves.update({f"{case}-plain-{key}": values for key, values in curves.items()})
            state.plain[case] = meta
            logger.info("%s: plain DIP to the cap, %s", case, meta)
            state.write()
    for t0 in args.t0:  # t0 by t0: the first t0 lands for every case before the next starts
        for case in args.cases:
            run = runs[case]
            if (case, t0, "live", _stop_key(stop)) in state.rows and not args.redo:
                logger.info("%s t0 %d: in %s already with these stop settings (--redo runs it again)", case, t0, name)
                continue
            half = half_of.get(case, run["experiment"].get("half", "?"))
            row, curves = live_row(run, half, t0, args, data)
            state.rows[row.key] = row
            state.curves.update({f"{case}-t{t0}-{key}": values for key, values in curves.items()})
            logger.info("%s t0 %d: %s", case, t0, row)
            state.replay(half_of, stop)
            state.write()
    path = state.write()
    logger.info("%s\nwrote %s", path.read_text(), path)
    return 0


@dataclass
class Recorded:
    """What the ``--cases`` mode holds and writes: the rows (live ones kept from earlier
    invocations), this machine's fit-A curves (``<name>.npz``: ``CASE-plain-psnr``,
    ``CASE-t<t0>-psnr_ema``, ...) and the plain runs' costs."""

    name: str
    out: Path
    info: dict[str, Any]
    args: argparse.Namespace
    commands: list[str]
    rows: dict[tuple[str, int, str, str], RecordedRow]
    plain: dict[str, dict[str, Any]]
    curves: dict[str, np.ndarray]
    runs: dict[str, dict[str, Any]]

    def replay(self, half_of: dict[str, str], stop: dict[str, Any]) -> None:
        """The replayed t0 = 0 rows of every case: one per stop settings its live rows ran with,
        one with ``stop`` (this invocation's) and one with today's ``StopConfig()``."""
        today = stop_settings(None)
        for case, run in self.runs.items():
            half = half_of.get(case, run["experiment"].get("half", "?"))
            settings = {_stop_key(today): today, _stop_key(stop): stop}
            settings.update({key[3]: row.stop for key, row in self.rows.items()
                             if key[0] == case and key[2] == "live" and row.stop is not None})
            for key, values in settings.items():
                if (case, 0, "replay", key) not in self.rows:
                    self.rows[(case, 0, "replay", key)] = replayed_row(run, half, values)
                    row = self.rows[(case, 0, "replay", key)]
                    logger.info("%s t0 0 (replay, %s): %s", case, _stop_label(values), row)

    def write(self) -> Path:
        """Write the curves, the table (cases in the order given, then earlier ones; t0
        ascending) and the JSON; returns the table's path."""
        self.out.mkdir(parents=True, exist_ok=True)
        np.savez(self.out / f"{self.name}.npz", **self.curves)
        order = {case: index for index, case in enumerate(self.runs)}
        rows = sorted(self.rows.values(), key=lambda row: (order[row.case], row.twin_start, row.source != "replay",
                                                           _stop_label(row.stop)))
        here = {case: _here(case, self.args.max_iterations or int(run["cap"]), self.curves, rows)
                for case, run in self.runs.items()}
        info = {**self.info, "load_average_1m_before": round(LOAD_AT_START, 2),
                "load_average_1m_now": round(os.getloadavg()[0], 2), "torch_threads": torch.get_num_threads()}
        flagged = any(row.flagged for row in rows) or any(meta.get("flagged") for meta in self.plain.values())
        recordings = {case: {"date": run["machine"].get("date"), "machine": run["machine"].get("cpu_model"),
                             "command": run.get("command"), "cap": run["cap"], "seed": run["seed"],
                             "noise_level": run["noise_level"], "observation_psnr": run.get("observation_psnr"),
                             "title": run.get("title")} for case, run in self.runs.items()}
        payload = {"machine": info, "flagged": flagged, "commands": self.commands, "recordings": recordings,
                   "plain": self.plain, "this_machine": here, "rows": [asdict(row) for row in rows]}
        markdown = _recorded_markdown(rows, self.runs, here, self.plain, info, flagged, self.commands, self.args)
        return write_results(self.name, markdown, payload, self.out)


def _here(case: str, cap: int, curves: dict[str, np.ndarray], rows: list[RecordedRow]) -> dict[str, Any] | None:
    """This machine's plain-DIP oracle of a case and each live row's fit A against its curves."""
    found = machine_reference(case, cap, curves)
    if found is None:
        return None
    source, reference = found
    versus = {}
    for row in rows:
        if row.case == case and row.source == "live":
            live = {key: curves[f"{case}-t{row.twin_start}-{key}"] for key in CURVES}
            same = {k: reference[k][: len(live[k])] for k in CURVES}
            versus[row.twin_start] = {
                "max_abs_diff": max(float(np.max(np.abs(live[k].astype(np.float64) - same[k]))) for k in CURVES),
                "identical": all(np.array_equal(live[k], same[k]) for k in CURVES)}
    return {"source": source, "oracle": float(max(np.nanmax(reference["psnr"]), np.nanmax(reference["psnr_ema"]))),
            "oracle_raw": float(np.nanmax(reference["psnr"])), "peak_raw": int(np.nanargmax(reference["psnr"])),
            "oracle_ema": float(np.nanmax(reference["psnr_ema"])), "peak_ema": int(np.nanargmax(reference["psnr_ema"])),
            "fit_a": versus}


def _earlier(path: Path, key: str, default: Any) -> Any:
    """One entry of the JSON an earlier invocation wrote (``default`` when there is none)."""
    return json.loads(path.read_text()).get(key, default) if path.is_file() else default


def _earlier_rows(path: Path) -> dict[tuple[str, int, str, str], RecordedRow]:
    """The live rows an earlier invocation wrote to ``path`` (none when it is missing)."""
    rows = [RecordedRow(**row) for row in _earlier(path, "rows", []) if row["source"] == "live"]
    return {row.key: row for row in rows}


def _load_curves(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}


def _recorded_markdown(rows: list[RecordedRow], runs: dict[str, dict[str, Any]], here: dict[str, dict[str, Any] | None],
                       plain: dict[str, dict[str, Any]], info: dict[str, Any], flagged: bool, commands: list[str],
                       args: argparse.Namespace) -> str:
    def number(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def versus(identical: bool | None, difference: float | None, compared: int | None = None) -> str:
        if difference is None:
            return "-"
        text = "identical" if identical else f"{difference:.2g} dB"
        return text + (f" ({compared})" if compared is not None else "")

    flag = (f"**FLAGGED: the 1-minute load average was above {args.max_load} before the script or a live run (other "
            "processes shared the CPU): the wall times are not idle-machine times; the iteration counts are exact.**"
            if flagged else None)
    smoke = ("**SMOKE TEST: the live runs were capped below the recordings' cap (`--max-iterations`): not a result.**"
             if any(row.smoke for row in rows) else None)
    cases = ", ".join(f"{row.case} ({row.half} half)" for row in rows if row.source == "replay")
    lines: list[str | None] = [
        "# The late-start twin on recorded cases (issue 18, a cheaper probe)", "",
        flag, "" if flag else None, smoke, "" if smoke else None,
        f"Cases: {cases}. Each case is a twin run that `bench/paper.py run` recorded (`bench/results/paper/"
        f"{args.scale}/NAME-s{args.seed}.json` + `.npz`; halves from `bench/halves.md`). **The row 'replay of the "
        "recording' (t0 = 0) is a replay** of the task's default rule on the recorded curves (`bench/rules_study.py`: "
        "`replay` with `default_candidate`, fed in blocks of 25 as the engine feeds it); **the rows 'live' are live "
        "runs** on this machine (a t0 = 0 one too where it was run): "
        "`oscfast.restore` with the task's default stop (`StopConfig(twin_start=t0)`, every other option its default), "
        "the observation, clean image, task options and preset that bench/paper.py makes for the experiment, the "
        "recording's seed, precision and cap, one torch thread. Fit B starts at t0 from a copy of fit A's state.",
        "",
        "'PSNR' is fit A's curve at the returned iteration in the recording's metric (`rules_study.metric_of`, the "
        "task's final step applied; the live run's own curve for live rows), 'image' the returned image's PSNR "
        "(`Restoration.psnr`, clamped). 'gap rec.' is to the plain-DIP oracle of the recording (best raw or averaged "
        "PSNR of its fit A over the cap); 'gap here' to the oracle of fit A on this machine (below), which is the "
        "right one for a live row whenever its fit A is not the recording's. 'fired' is where the rule fired ('-': it "
        "did not, the run went to the cap); 'run' the iterations run (to the end of the sync block it fired in; for "
        "the replay, what the engine would run); 'fit B' the iterations fit B trained and 'fits' both fits' "
        "(`Restoration.fit_iterations`; the replay: 2 x run). 'fit A vs rec.': the largest |difference| of the live "
        "fit-A PSNR curves (raw and averaged) from the recording's over the iterations both have (in brackets); "
        "'fit A vs here': the same against this machine's full fit-A curve ('identical': equal as float32). 'level': "
        "for live rows the level the risk rule ended with (`Restoration.noise_level`, after its level cut), for the "
        "replay the task's estimate that the recording's risk rules were given (before any cut). 'stop settings': "
        "the `StopConfig` fields the rule ran with that differ from today's `StopConfig()` ('defaults': none; "
        "'not recorded': a row of the script's first version, which did not record them).",
        "",
        "| case | half | t0 | row | stop settings | returned it. (output) | fired | run | fit B | fits | PSNR | image | "
        "gap rec. dB | gap here dB | fit A vs rec. | fit A vs here | level | wall s | load before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        local = here.get(r.case)
        gap_here = local["oracle"] - r.psnr if local is not None and r.source == "live" and r.metric == "psnr" else None
        check = (local or {}).get("fit_a", {}).get(r.twin_start) if r.source == "live" else None
        lines.append(
            f"| {r.case} | {r.half} | {r.twin_start} | {'replay of the recording' if r.source == 'replay' else 'live'} | "
            f"{_stop_label(r.stop)} | {r.stop_iteration} ({r.output}) | {'-' if r.rule_stop is None else r.rule_stop} | "
            f"{r.iterations_run} of {r.cap} | {r.fit_b_iterations} | {r.fit_iterations} | {r.psnr:.2f} | {number(r.image_psnr)} | "
            f"{r.gap_db:.2f} | {number(gap_here)} | "
            f"{versus(r.fit_a_identical, r.fit_a_max_abs_diff, r.fit_a_compared)} | "
            f"{versus(check['identical'], check['max_abs_diff']) if check else '-'} | {r.noise_level:.4f} | "
            f"{number(r.seconds, 0)} | {number(r.load_before)} |")
    lines += ["", "Per case (the recording and this machine's fit A):", ""]
    for case, run in runs.items():
        recorded = next(row for row in rows if row.case == case)
        local = here.get(case)
        if local is None:
            machine_text = "this machine: no full fit-A curve yet (`--oracle` runs plain DIP to the cap)"
        else:
            if local["source"].endswith("-plain") and case in plain:
                made = f"plain DIP to the cap, {plain[case]['seconds']:.0f} s, load {plain[case]['load_before']:.2f} before"
            else:
                made = f"the live run {local['source']}, which reached the cap"
            machine_text = (f"this machine's fit A ({made}): oracle {local['oracle']:.2f} dB (raw {local['oracle_raw']:.2f} "
                            f"at it. {local['peak_raw']}, ema {local['oracle_ema']:.2f} at it. {local['peak_ema']})")
        raw, ema = run["traces"]["psnr"][PLAIN], run["traces"]["psnr_ema"][PLAIN]
        lines.append(
            f"- {case}: {run.get('title')}; recorded {run['machine'].get('date')} on {run['machine'].get('cpu_model')} "
            f"(`{run.get('command')}`), cap {run['cap']}, seed {run['seed']}, noise level {run['noise_level']:.4f}; the "
            f"recording's oracle {recorded.oracle:.2f} dB ({recorded.metric}; raw {np.nanmax(raw):.2f} at it. "
            f"{int(np.nanargmax(raw))}, ema {np.nanmax(ema):.2f} at it. {int(np.nanargmax(ema))}); {machine_text}")
    lines += ["", "Commands (each under `nice -n 10 env OMP_NUM_THREADS=1`):", ""]
    lines += [f"- `{command}`" for command in commands]
    lines += ["", "## Machine", "", machine_header(info)]
    return "\n".join(line for line in lines if line is not None) + "\n"

if __name__ == "__main__":
    raise SystemExit(main())
