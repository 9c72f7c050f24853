"""``siamese`` command line: a thin shell over the stage functions (what dvc.yaml calls)."""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import typer

from siamese import paths
from siamese.data.downloads import ARCHIVES, download
from siamese.data.files import read_file
from siamese.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    BadImageError,
    DatasetError,
    DownloadError,
    GalleryError,
    Interrupted,
    ParamsError,
    ProjectLockedError,
    PromotionError,
    RegistryStateError,
    StageFailed,
    TrainingFault,
    from_os_error,
    in_chain,
)
from siamese.io import write_json
from siamese.locking import project_lock
from siamese.models.runtimes import RUNTIMES
from siamese.output import VERBOSE_ENV, configure


class _App(typer.Typer):
    """The ``siamese`` command (the console script calls it): whatever a command did not turn
    into its own ``error:`` line still ends as one, through the same translation (``explain``)
    and with its exit code, instead of a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as err:
            try:
                _report(err)
            except typer.Exit as done:
                sys.exit(done.exit_code)


# Commands import the params (siamese.config reads the registries of the components it
# configures, which loads torch, ~2 s), their stage, the registry, pandas and the Prefect flows
# inside the function: Lightning (~5 s), MLflow (~2.5 s) and Prefect (~2 s) load only for the
# commands that use them, so `siamese --help` and the light commands start fast.
app = _App(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(
    no_args_is_help=True, help="Bring a dataset under DVC, or download a benchmark."
)
app.add_typer(data_app, name="data")

ParamsOpt = typer.Option(paths.PARAMS, "--params", help="params file")


def _verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="show third-party warnings and notices; on failure, the traceback (and a stage's "
        "output)",
    ),
) -> None:
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    configure(_verbose())  # quiet by default: siamese.output lists what is silenced and why


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def explain(err: BaseException, stage: str | None = None) -> tuple[str, int]:
    """The one line and the exit code the user gets for ``err``: the project's one translation of
    a failure. A project error (siamese.errors) carries its exit code; a tracking-store failure
    (MLflow, requests) and an operating-system error (no space left, a file name too long,
    permission denied) become one (siamese.registry.tracking.tracking_error,
    siamese.errors.from_os_error); a signal or Ctrl-C exits 128 + its number; anything else is
    an unexpected error (exit 1) whose traceback ``--verbose`` shows."""
    prefix = f"{stage}: " if stage else ""
    interrupt = in_chain(err, KeyboardInterrupt)
    if interrupt is not None:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        what = "nothing was published" if stage else "the stage that was running published nothing"
        return (
            f"{prefix}{Interrupted(signum)} before it finished: {what} and the previous outputs "
            "are unchanged (a training resumes from its last epoch checkpoint on rerun)",
            128 + signum,
        )
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):  # a project error: its message already names the cause and fix
        return (f"{prefix}{err}" if isinstance(err, TrainingFault) else str(err)), code
    if "mlflow" in sys.modules:  # only a command that loaded MLflow can have an MLflow failure
        from siamese.registry.tracking import tracking_error

        tracked = tracking_error(err, stage or "siamese")
        if tracked is not None:
            return str(tracked), tracked.exit_code
    os_err = in_chain(err, OSError)
    if os_err is not None:
        if os_err.errno is None and isinstance(os_err, FileNotFoundError):
            return str(os_err), EXIT_BAD_INPUT  # the project's own "X not found: run Y" messages
        mapped = from_os_error(os_err, stage)
        return str(mapped), mapped.exit_code
    lines = str(err).strip().splitlines()
    detail = f": {lines[0][:300]}" if lines else ""
    return (
        f"{prefix}unexpected {type(err).__name__}{detail} (`siamese --verbose ...` shows the "
        "traceback)",
        EXIT_FAILED,
    )


def _report(err: BaseException, stage: str | None = None) -> NoReturn:
    """Exit with ``err``'s one ``error:`` line and exit code; with ``--verbose`` the traceback
    (and what a failed stage process printed) comes first."""
    message, code = explain(err, stage)
    if _verbose():
        if isinstance(err, StageFailed) and err.output:  # indented: its own error line is not ours
            typer.echo(f"output of {err.step}:", err=True)
            for line in err.output.rstrip().splitlines():
                typer.echo(f"  | {line}", err=True)
        traceback.print_exception(err, file=sys.stderr)
    _fail(message, code)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM and SIGHUP raise ``Interrupted`` (a KeyboardInterrupt) while a stage runs, so it
    unwinds as on Ctrl-C: the MLflow run is ended FAILED and the scratch output removed, instead of
    the process vanishing with its run left RUNNING. Only the main thread can set handlers."""

    def handler(signum, _frame):
        raise Interrupted(signum)

    signums = (signal.SIGTERM, signal.SIGHUP)
    try:
        previous = {s: signal.signal(s, handler) for s in signums}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _run_stage(fn, params_path: Path, *args) -> None:
    from siamese.config import load_params

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stage = fn.__name__.removeprefix("run_")
    try:
        with _terminate_as_interrupt():
            params = load_params(params_path)
            result = fn(params, *args)
    except PromotionError:
        raise  # promote and rollback give it their own exit code
    except (Exception, KeyboardInterrupt) as err:
        _report(err, stage)
    except SystemExit as err:  # Lightning exits 1 after it handled an interrupt in the fit
        if in_chain(err, KeyboardInterrupt) is None:
            raise
        _report(err, stage)
    if result:
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


@contextlib.contextmanager
def _project_locked():
    """Registry moves by hand wait for no one: they fail clearly while a pipeline run holds the
    project (a run's own ``siamese promote`` inherits its lock)."""

    try:
        with project_lock(Path(".")):
            yield
    except ProjectLockedError as err:
        _fail(str(err))


@app.command()
def prepare(params: Path = ParamsOpt, out: Path = paths.PREPARED) -> None:
    """Load, validate and split the dataset by identity."""
    from siamese.stages.prepare import run_prepare

    _run_stage(run_prepare, params, out)


@app.command()
def mine(
    params: Path = ParamsOpt, prepared: Path = paths.PREPARED, out: Path = paths.PAIRS
) -> None:
    """Write the fixed validation/test pairs (and offline training pairs)."""
    from siamese.stages.mine import run_mine

    _run_stage(run_mine, params, prepared, out)


@app.command()
def train(
    params: Path = ParamsOpt,
    prepared: Path = paths.PREPARED,
    pairs: Path = paths.PAIRS,
    out: Path = paths.TRAIN,
    metrics: Path = paths.TRAIN_METRICS,
) -> None:
    """Train the shared encoder (Lightning; DDP-ready) and record the MLflow run."""
    from siamese.stages.train import run_train

    _run_stage(run_train, params, prepared, pairs, out, metrics)


@app.command()
def calibrate(
    params: Path = ParamsOpt,
    prepared: Path = paths.PREPARED,
    pairs: Path = paths.PAIRS,
    model: Path = paths.TRAIN,
    out: Path = paths.CALIBRATION,
) -> None:
    """Choose the decision threshold on the validation pairs."""
    from siamese.stages.calibrate import run_calibrate

    _run_stage(run_calibrate, params, prepared, pairs, model, out)


@app.command()
def evaluate(
    params: Path = ParamsOpt,
    prepared: Path = paths.PREPARED,
    pairs: Path = paths.PAIRS,
    model: Path = paths.TRAIN,
    calibration: Path = paths.CALIBRATION,
    out: Path = paths.EVALUATION,
) -> None:
    """Score the test pairs at the calibrated threshold."""
    from siamese.stages.evaluate import run_evaluate

    _run_stage(run_evaluate, params, prepared, pairs, model, calibration, out)


@app.command()
def register(
    params: Path = ParamsOpt,
    prepared: Path = paths.PREPARED,
    pairs: Path = paths.PAIRS,
    model: Path = paths.TRAIN,
    calibration: Path = paths.CALIBRATION,
    evaluation: Path = paths.EVALUATION,
    out: Path = paths.REGISTRATION,
    force: bool = typer.Option(
        False,
        "--force",
        envvar="SIAMESE_REGISTER_FORCE",  # how `siamese run` asks it of the DVC register stage
        help="when the tracking store lacks the training run (a lost mlflow.db), register the "
        "exported model in a new run re-created from the exported training",
    ),
) -> None:
    """Log the pyfunc model and register it as challenger (`siamese promote` decides).

    A model that a version already serves is not registered again: the challenger alias points
    to that version (and its files are uploaded again if the artifact store lost them). Exit 2
    with the repair named when the registry lacks the training run."""
    from siamese.stages.register import run_register

    _run_stage(run_register, params, prepared, pairs, model, calibration, evaluation, out, force)


@app.command()
def oneshot(
    runs: Path = typer.Option(..., "--runs", help="folder of runNN/ one-shot runs (Lake et al.)"),
    model: str = typer.Option(
        ..., "--model", help="models:/NAME@champion, models:/NAME/VERSION, runs:/ID/model or a dir"
    ),
    out: Path | None = typer.Option(None, "--out", help="write the result as JSON here"),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI/project)"
    ),
) -> None:
    """Score a model on one-shot runs: share of test items matched to their own class."""
    from siamese.evaluation.oneshot import read_runs, score_runs
    from siamese.registry.loading import load_registered_encoder

    try:
        parsed = read_runs(runs)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    try:
        encoder = load_registered_encoder(model, tracking_uri)
    except Exception as err:  # unknown model, alias or unreachable registry
        _fail(f"cannot load model {model}: {err}")
    result = {"model": model, "runs_dir": str(runs), **score_runs(encoder, parsed)}
    if out is not None:
        write_json(out, result)
    typer.echo(
        f"one-shot accuracy {result['accuracy']:.4f} ({result['correct']}/{result['items']}, "
        f"{result['runs']} runs of {result['ways']}-way)"
    )


ModelOpt = typer.Option(
    None,
    "--model",
    help="models:/NAME@alias, models:/NAME/VERSION, runs:/ID/model or a model folder "
    "(default: models:/<register.model_name>@champion from --params)",
)
TrackingOpt = typer.Option(
    None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI/project)"
)
Runtime = enum.Enum("Runtime", {r: r for r in RUNTIMES}, type=str)  # typer lists an Enum's values
RuntimeOpt = typer.Option(
    None,
    "--runtime",
    help="what runs the encoder: torch, or onnx (onnxruntime on the package's ONNX export); "
    "default: the package's serve.runtime",
)


def _runtime(runtime: Runtime | None) -> str | None:
    return None if runtime is None else runtime.value


def _default_model(model: str | None, params_path: Path) -> str:
    from siamese.config import load_params

    if model:
        return model
    try:
        return f"models:/{load_params(params_path).register.model_name}@champion"
    except ParamsError as err:
        _fail(f"{err} (or pass --model)")


@app.command()
def verify(
    image_a: Path = typer.Argument(..., help="first image file"),
    image_b: Path = typer.Argument(..., help="second image file"),
    model: str | None = ModelOpt,
    params: Path = ParamsOpt,
    tracking_uri: str | None = TrackingOpt,
    runtime: Runtime | None = RuntimeOpt,
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Do two images show the same identity? Distance, probability and the decision."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from siamese.registry.loading import load_served_model

    uri = _default_model(model, params)
    try:
        data = [read_file(p) for p in (image_a, image_b)]
    except BadImageError as err:
        _fail(f"cannot read image: {err}")
    try:
        served = load_served_model(uri, tracking_uri, _runtime(runtime))
    except Exception as err:  # unknown model, alias or unreachable registry, no ONNX export
        _fail(f"cannot load model {uri}: {err}")
    frame = pd.DataFrame({"image_a": [data[0]], "image_b": [data[1]]})
    try:
        row = served.predict(None, frame).iloc[0]
    except MlflowException as err:
        msg = err.message.replace("row 0 image_a", str(image_a))
        _fail(msg.replace("row 0 image_b", str(image_b)))
    prob = None if pd.isna(row["probability"]) else float(row["probability"])
    result = {
        "model": uri,
        "image_a": str(image_a),
        "image_b": str(image_b),
        "distance": float(row["distance"]),
        "probability": prob,
        "threshold": served.threshold,
        "runtime": served.runtime,
        "match": bool(row["match"]),
        "decision": "match" if row["match"] else "no match",
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    rel = "<=" if result["match"] else ">"
    typer.echo(f"distance:    {result['distance']:.6f}")
    typer.echo(f"probability: {'n/a' if prob is None else f'{prob:.6f}'}")
    typer.echo(
        f"decision:    {result['decision']} (distance {rel} threshold {served.threshold:.6f})"
    )


CalibrateFromOpt = typer.Option(
    None,
    "--calibrate-from",
    help="identity folders (<identity>/<image>) of people outside the gallery and the training "
    "data, split into enrolled and not enrolled to calibrate the identify / anomaly thresholds "
    "(default: the val split of the project's prepared data)",
)
PreparedOpt = typer.Option(
    None,
    "--prepared",
    help="prepared data whose val split calibrates the thresholds (default: artifacts/prepared "
    "beside --params)",
)


def _calibration(params_path: Path, calibrate_from: Path | None, prepared: Path | None):
    """The ``calibrate`` hook of build_gallery: thresholds at the identify.* settings of
    ``params_path`` (the defaults when there is no such file), on ``calibrate_from`` or the
    prepared val split; None when neither exists (an uncalibrated, search-only gallery)."""
    from siamese.config import IdentifyParams, load_params
    from siamese.registry.identify import calibration_hook

    try:
        loaded = load_params(params_path) if params_path.is_file() else None
    except ParamsError as err:
        _fail(str(err))
    settings, seed = (loaded.identify, loaded.seed) if loaded else (IdentifyParams(), 42)
    if calibrate_from is not None and not calibrate_from.exists():
        _fail(f"--calibrate-from {calibrate_from}: no such folder")
    if prepared is not None and not prepared.is_dir():
        _fail(f"--prepared {prepared}: no prepared data there (run `siamese prepare`)")
    if calibrate_from is None and prepared is None:
        prepared = params_path.parent / paths.PREPARED
        if not prepared.is_dir():
            typer.secho(
                f"note: no {prepared} and no --calibrate-from: the gallery is searchable, but "
                "identify and anomaly need its thresholds calibrated",
                err=True,
            )
            return None

    return calibration_hook(settings, seed, calibrate_from, prepared)


@app.command()
def index(
    root: Path = typer.Argument(..., help="identity folders (<identity>/<image>) or a zip"),
    model: str | None = ModelOpt,
    out: Path = typer.Option(Path("gallery"), "--out", help="gallery folder (replaced atomically)"),
    ivf_above: int = typer.Option(
        10_000, "--ivf-above", min=0, help="exact flat index up to this many images, IVF above"
    ),
    nlist: int | None = typer.Option(None, "--nlist", min=1, help="IVF cells (default ~4 sqrt n)"),
    nprobe: int | None = typer.Option(
        None, "--nprobe", min=1, help="IVF cells searched per query (default nlist/8)"
    ),
    params: Path = ParamsOpt,
    tracking_uri: str | None = TrackingOpt,
    calibrate_from: Path | None = CalibrateFromOpt,
    prepared: Path | None = PreparedOpt,
    runtime: Runtime | None = RuntimeOpt,
) -> None:
    """Embed a dataset into a searchable gallery (FAISS under the model's metric).

    The open-set (`siamese identify`) and anomaly (`siamese anomaly`) thresholds are calibrated
    at identify.target_fpir / identify.target_false_alarm of --params on people outside the
    gallery: --calibrate-from DIR, else the validation split of the project's prepared data;
    without either the gallery is only searchable."""
    from siamese.registry.gallery import build_gallery

    uri = _default_model(model, params)
    calibrate = _calibration(params, calibrate_from, prepared)
    try:
        summary = build_gallery(
            root, uri, out, tracking_uri, ivf_above, nlist, nprobe, _runtime(runtime), calibrate
        )
    except (
        DatasetError,
        BadImageError,
        GalleryError,
        FileNotFoundError,
        RegistryStateError,
        ValueError,  # --runtime onnx for a model without an ONNX export
    ) as err:
        _fail(str(err))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))


@app.command()
def search(
    image: Path = typer.Argument(..., help="query image file"),
    index_dir: Path = typer.Option(Path("gallery"), "--index", help="gallery folder"),
    k: int = typer.Option(5, "-k", "--k", min=1, help="identities to return"),
    model: str | None = typer.Option(
        None, "--model", help="the model to embed the query (default: the gallery's own)"
    ),
    tracking_uri: str | None = TrackingOpt,
    runtime: Runtime | None = RuntimeOpt,
    as_json: bool = typer.Option(False, "--json", help="print the hits as JSON"),
) -> None:
    """The k nearest identities in a gallery to an image, with their distances."""
    from mlflow.exceptions import MlflowException

    from siamese.registry.gallery import search_image

    try:
        hits = search_image(index_dir, image, k, model, tracking_uri, _runtime(runtime))
    except (BadImageError, GalleryError, MlflowException, RegistryStateError, ValueError) as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(hits, indent=2))
        return
    for h in hits:
        typer.echo(f"{h['rank']:>3}  {h['distance']:.6f}  {h['identity']}  ({h['path']})")


GalleryOpt = typer.Option(Path("gallery"), "--index", help="gallery folder")
GalleryModelOpt = typer.Option(
    None, "--model", help="the model to embed the query (default: the gallery's own)"
)


def _decide(
    mode: str, images: list[Path], index_dir: Path, model, tracking_uri, runtime
) -> list[dict]:
    from mlflow.exceptions import MlflowException

    from siamese.registry.identify import decide_files

    try:
        return decide_files(index_dir, images, mode, model, tracking_uri, _runtime(runtime))
    except (BadImageError, GalleryError, MlflowException, RegistryStateError, ValueError) as err:
        _fail(str(err))


@app.command()
def identify(
    images: list[Path] = typer.Argument(..., help="query image file(s)"),
    index_dir: Path = GalleryOpt,
    model: str | None = GalleryModelOpt,
    tracking_uri: str | None = TrackingOpt,
    runtime: Runtime | None = RuntimeOpt,
    as_json: bool = typer.Option(False, "--json", help="print the answers as JSON"),
) -> None:
    """Who is this? The best enrolled identity and its distance, or `unknown` when the distance
    is beyond the gallery's open-set threshold (calibrated at identify.target_fpir)."""
    answers = _decide("identify", images, index_dir, model, tracking_uri, runtime)
    if as_json:
        typer.echo(json.dumps(answers if len(images) > 1 else answers[0], indent=2))
        return
    for a in answers:
        rel = "<=" if a["known"] else ">"
        typer.echo(
            f"{a['image']}: {a['identity']}  (distance {a['distance']:.6f} {rel} threshold "
            f"{a['threshold']:.6f}; nearest {a['nearest']})"
        )


@app.command()
def anomaly(
    images: list[Path] = typer.Argument(..., help="image file(s) to score"),
    index_dir: Path = GalleryOpt,
    model: str | None = GalleryModelOpt,
    tracking_uri: str | None = TrackingOpt,
    runtime: Runtime | None = RuntimeOpt,
    as_json: bool = typer.Option(False, "--json", help="print the scores as JSON"),
) -> None:
    """Is this unlike everything known? Each image's distance to the k-th nearest gallery image
    (kNN novelty) and an alarm above the gallery's threshold (calibrated at
    identify.target_false_alarm)."""
    answers = _decide("anomaly", images, index_dir, model, tracking_uri, runtime)
    if as_json:
        typer.echo(json.dumps(answers, indent=2))
        return
    for a in answers:
        verdict = "ANOMALY" if a["anomaly"] else "known"
        rel = ">" if a["anomaly"] else "<="
        typer.echo(
            f"{a['image']}: {verdict}  (score {a['score']:.6f} {rel} threshold "
            f"{a['threshold']:.6f}, k={a['k']})"
        )


@app.command()
def enroll(
    root: Path = typer.Argument(..., help="identity folders (<identity>/<image>) to add"),
    index_dir: Path = GalleryOpt,
    model: str | None = GalleryModelOpt,
    tracking_uri: str | None = TrackingOpt,
) -> None:
    """Add identities to a gallery without embedding the others again (atomic; an identity
    already enrolled is refused)."""
    from mlflow.exceptions import MlflowException

    from siamese.registry.enrolment import enroll as enroll_folder

    try:
        summary = enroll_folder(root, index_dir, model, tracking_uri)
    except (
        BadImageError,
        DatasetError,
        GalleryError,
        FileNotFoundError,
        MlflowException,
        RegistryStateError,
    ) as err:
        _fail(str(err))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))


@app.command()
def unenroll(
    name: str = typer.Argument(..., help="the identity to remove"),
    index_dir: Path = GalleryOpt,
) -> None:
    """Remove an identity (all its images) from a gallery (atomic)."""
    from siamese.registry.enrolment import unenroll as unenroll_identity

    try:
        summary = unenroll_identity(name, index_dir)
    except GalleryError as err:
        _fail(str(err))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))


@app.command("register-gallery")
def register_gallery(
    index_dir: Path = typer.Argument(Path("gallery"), help="gallery folder (siamese index)"),
    tracking_uri: str | None = TrackingOpt,
) -> None:
    """Register a gallery with the model version that embedded it, as a version of
    <model name>-gallery, so `mlflow models serve -m models:/<model name>-gallery@champion`
    answers mode identify and anomaly; `siamese promote` embeds it again with each new
    champion."""
    from mlflow.exceptions import MlflowException

    from siamese.registry.gallery_package import register_gallery as register

    try:
        summary = register(index_dir, tracking_uri)
    except (GalleryError, MlflowException, RegistryStateError) as err:
        _fail(str(err))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))


@app.command()
def export(
    model: str | None = ModelOpt,
    fmt: str = typer.Option("onnx", "--format", help="what to export: onnx"),
    out: Path = typer.Option(..., "--out", help="folder to write (replaced atomically)"),
    params: Path = ParamsOpt,
    tracking_uri: str | None = TrackingOpt,
) -> None:
    """Write a registered model as plain files (ONNX encoder and distance, preprocessing and
    calibration specs, score_pair.py) to use with onnxruntime alone, outside MLflow."""
    from mlflow.exceptions import MlflowException

    from siamese.registry.export import export_model

    uri = _default_model(model, params)
    try:
        summary = export_model(uri, out, fmt, tracking_uri)
    except (MlflowException, RegistryStateError, ValueError, FileNotFoundError) as err:
        _fail(f"cannot export {uri}: {err}")
    typer.echo(json.dumps({"out": str(out), **summary}, indent=2))


@app.command("oneshot-runs")
def oneshot_runs(
    source: Path = typer.Option(..., "--source", help="Omniglot images_background.zip or folder"),
    dest: Path = typer.Option(..., "--dest", help="folder to write runNN/ into (replaced)"),
    alphabets: str = typer.Option("", help="comma-separated alphabets (default: all)"),
    n_runs: int = typer.Option(20, "--runs", min=1, help="number of runs"),
    ways: int = typer.Option(20, min=2, help="classes per run"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Build one-shot runs in the official format (class_labels.txt) from background images."""
    from siamese.evaluation.oneshot import build_runs

    chosen = [a.strip() for a in alphabets.split(",") if a.strip()] or None
    try:
        names = build_runs(source, dest, chosen, n_runs, ways, seed)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"wrote {len(names)} runs of {ways}-way to {dest}")


@app.command()
def check(
    params: Path = ParamsOpt,
    preset: str | None = typer.Option(
        None, "--preset", help="check with params/NAME.yaml applied, as `siamese run` would"
    ),
    set_: list[str] = typer.Option([], "--set", "-S", help="check with this override applied"),
) -> None:
    """Validate params.yaml (with a preset and overrides applied as `siamese run` applies them;
    nothing is written) and exit (non-zero with the bad keys named): every key, the names MLflow
    will be given, and the trainer settings as Lightning takes them on this machine."""
    from siamese.config import apply_overrides, read_params_file, validate_params
    from siamese.params_file import preset_overrides
    from siamese.registry.names import check_tracking_names
    from siamese.training.settings import check_trainer

    try:
        overrides = (preset_overrides(preset, params.parent) if preset else []) + list(set_)
        validated = validate_params(
            apply_overrides(read_params_file(params), overrides), str(params)
        )
        check_tracking_names(validated, str(params))
        notes = check_trainer(validated, str(params))
    except ParamsError as err:
        _fail(str(err))
    for note in notes:
        typer.echo(f"note: Lightning: {note}")
    applied = ([f"preset {preset}"] if preset else []) + [f"--set {s}" for s in set_]
    typer.echo(f"{params}{' with ' + ', '.join(applied) if applied else ''}: ok")


@app.command()
def run(
    set_: list[str] = typer.Option([], "--set", "-S", help="override, e.g. train.loss=triplet"),
    preset: str | None = typer.Option(
        None, "--preset", help="apply params/NAME.yaml (e.g. omniglot) before --set overrides"
    ),
    project: Path = typer.Option(Path("."), help="project directory"),
    push: bool = typer.Option(True, help="push data and outputs to the DVC remote afterwards"),
    wait: float = typer.Option(
        0.0, "--wait", help="seconds to wait for another run of this project to finish (0: fail)"
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="show third-party warnings and notices; on failure, the tracebacks and the "
        "stage's output",
    ),
) -> None:
    """Run the whole pipeline as a Prefect flow through DVC and print the summary.

    With nothing to do (DVC finds no stage changed, the registry lacks nothing and promotion has
    nothing to decide) it says so and starts no stage and no flow. A stage that fails leaves its
    previous outputs in place and ends the run with its one ``error:`` line and its exit code."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        configure(True)  # and the stage processes the run starts
    from pipelines.summary import format_summary
    from pipelines.uptodate import dvc_status

    with contextlib.ExitStack() as held:
        status = None
        if (project / ".dvc").is_dir():  # (a refused run leaves any other folder as it was)
            try:  # one run per project, until promotion is decided (the flow re-enters it)
                held.enter_context(project_lock(project.resolve(), wait))
            except ProjectLockedError as err:
                _report(err)
            # DVC's answer is computed in its own process while this one validates the params
            status = held.enter_context(dvc_status(project.resolve()))
        summary = _run_unless_up_to_date(project, set_, preset, push, wait, status)
    typer.echo(format_summary(summary))


def _run_unless_up_to_date(project: Path, set_, preset, push: bool, wait: float, status) -> dict:
    """Validate, then either the summary of a run with nothing to do (pipelines.uptodate) or
    the flow's. ``status``: ``dvc status`` running, in a DVC project whose lock is held."""
    from pipelines.uptodate import known_valid, nothing_to_do, remember_valid, run_facts

    params_path = project / paths.PARAMS
    try:
        text = params_path.read_bytes()
    except OSError:
        text = None  # validation names the problem
    facts = known_valid(project, text) if status and text and not (set_ or preset) else None
    if facts is not None:  # these bytes passed validation with this code: no torch to import
        summary = nothing_to_do(project.resolve(), facts, push, status)
        if summary is not None:
            return summary
    from siamese.config import apply_overrides, read_params_file, validate_params
    from siamese.params_file import preset_overrides
    from siamese.registry.names import check_tracking_names

    try:  # fail fast, before an orchestrator is even started (or imported: Prefect takes ~2 s)
        if preset:
            set_ = preset_overrides(preset, project) + list(set_)
        raw = read_params_file(params_path)
        params = validate_params(apply_overrides(raw, set_), str(params_path))
        check_tracking_names(params, str(params_path))
        # data changed since its DVC record: refused here, before Prefect (which would log the
        # refusal with a traceback); the flow checks again for scheduled runs
        from siamese.stages.provenance import source_state

        source_state(params.data.source, project, params.data.max_file_bytes, fingerprint=False)
    except (ParamsError, DatasetError) as err:
        _fail(str(err))
    if status is not None and facts is None and apply_overrides(raw, set_) == raw:
        # params.yaml stays as it is: remember it passed, and ask whether anything must run
        facts = run_facts(params)
        remember_valid(project, text, facts)
        summary = nothing_to_do(project.resolve(), facts, push, status)
        if summary is not None:
            return summary
    from siamese.training.settings import check_trainer  # Lightning: only when a stage may run

    try:
        check_trainer(params, str(params_path))
    except ParamsError as err:
        _fail(str(err))
    if status is not None:  # DVC takes its repo lock: the flow's DVC calls come after it
        status.stale()
    from pipelines.flow import quiet_failure_tracebacks, training_flow

    try:
        # Prefect logs a failed task's and flow's traceback; the user gets one error line
        # instead, and --verbose shows them (the Prefect API keeps them either way)
        with quiet_failure_tracebacks(not _verbose()):
            summary = training_flow(
                project_dir=str(project.resolve()), overrides=set_, push=push, wait_for_lock=wait
            )
    except (Exception, KeyboardInterrupt) as err:
        _report(err)
    if status is not None:  # the next no-change run: no validation, no MLflow, if untouched
        from pipelines.uptodate import remember_registry

        with contextlib.suppress(ParamsError, OSError):
            text = params_path.read_bytes()  # as the flow left it (with the overrides)
            facts = run_facts(validate_params(read_params_file(params_path)))
            remember_valid(project, text, facts)
            remember_registry(project.resolve(), facts)
    return summary


@app.command()
def sweep(
    set_: list[str] = typer.Option(
        [],
        "--set",
        "-S",
        help="KEY=V1,V2,...: the values of one axis of the grid (YAML, like --set of run); "
        "one value: fixed for every point",
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="apply params/NAME.yaml to every point, before the --set values"
    ),
    project: Path = typer.Option(Path("."), help="project directory"),
    wait: float = typer.Option(
        0.0, "--wait", help="seconds to wait for another run of this project to finish (0: fail)"
    ),
) -> None:
    """Run a grid of params as DVC experiments (up to evaluate) and print them ranked.

    Every point is validated before any runs; each is `dvc exp run --temp` with its values, its
    training an MLflow child run of one parent run. Nothing is registered or promoted: adopt a
    point with `dvc exp apply NAME && siamese run`. Exit 1 when a point failed (the table still
    lists the others)."""
    from pipelines.sweep import format_table, run_sweep

    try:
        result = run_sweep(project, list(set_), preset, wait, echo=typer.echo)
    except (Exception, KeyboardInterrupt) as err:
        _report(err)
    typer.echo(format_table(result))
    if result.failed:
        _fail(f"{len(result.failed)} of {len(result.outcomes)} sweep points failed", EXIT_FAILED)


@app.command()
def promote(
    params: Path = ParamsOpt,
    prepared: Path = paths.PREPARED,
    pairs: Path = paths.PAIRS,
    out: Path = paths.PROMOTION,
    version: str | None = typer.Option(
        None, "--version", help="compare this version instead of the challenger alias"
    ),
) -> None:
    """Move `champion` to the challenger if it beats the champion on the benchmark pairs.

    Exit 3 when refused (the challenger's evaluation failed or is missing); exit 2 when the
    version does not exist or a version to compare lost its model files (the message names the
    repair)."""
    from siamese.stages.promote import run_promote

    try:
        with _project_locked():
            _run_stage(run_promote, params, prepared, pairs, out, version)
    except PromotionError as err:
        _fail(str(err), code=3)


@app.command()
def rollback(params: Path = ParamsOpt, out: Path = paths.PROMOTION) -> None:
    """Move `champion` back to the version it replaced (fails when there is none)."""
    from siamese.stages.promote import run_rollback

    try:
        with _project_locked():
            _run_stage(run_rollback, params, out)
    except PromotionError as err:
        _fail(str(err), code=1)


@app.command()
def deploy(
    cron: str | None = typer.Option(None, help="cron schedule (default: schedule.cron)"),
    timezone: str | None = typer.Option(None, help="IANA zone (default: schedule.timezone)"),
    name: str | None = typer.Option(None, help="deployment name (default: schedule.deployment)"),
    set_: list[str] = typer.Option([], "--set", "-S", help="override passed to each run"),
    project: Path = typer.Option(Path("."), help="project directory"),
    limit: int = typer.Option(1, min=1, help="concurrent runs this runner executes"),
) -> None:
    """Serve the retrain-and-promote flow on a cron schedule (needs PREFECT_API_URL).

    Creates or updates the deployment on the Prefect server and runs its runner until stopped:
    each scheduled (or manually triggered) run trains, then promotes if the gate allows."""
    from siamese.config import apply_overrides, read_params_file, validate_params

    try:
        params_path = project / paths.PARAMS
        raw = apply_overrides(read_params_file(params_path), set_)
        sched = validate_params(raw, str(params_path)).schedule
        cron, timezone = cron or sched.cron, timezone or sched.timezone
        # the command-line schedule is validated like params.yaml's
        validate_params({"schedule": {"cron": cron, "timezone": timezone}}, "--cron/--timezone")
    except ParamsError as err:
        _fail(str(err))
    if not os.environ.get("PREFECT_API_URL"):
        _fail(
            "PREFECT_API_URL is not set: a schedule needs a running Prefect server "
            "(prefect server start; export PREFECT_API_URL=http://127.0.0.1:4200/api)"
        )
    from pipelines.flow import retraining_deployment, serve_retraining

    deployment = retraining_deployment(project, cron, timezone, name, set_ or None)
    typer.echo(
        f"serving deployment {deployment.flow_name}/{deployment.name} (cron {cron!r} "
        f"{timezone}) for {project.resolve()}; Ctrl-C stops the runner and pauses the schedule"
    )
    serve_retraining(deployment, limit=limit)


@data_app.command("add")
def data_add(
    path: Path = typer.Argument(
        ...,
        help="a directory of identity folders, a zip of one, or a .csv / .parquet manifest "
        "(its folder is added)",
    ),
    name: str = typer.Option("", help="name under data/ (default: the folder name)"),
    project: Path = typer.Option(Path("."), help="project directory"),
    use: bool = typer.Option(True, help="point data.source in params.yaml at it"),
    on_bad_image: str = typer.Option(
        None, help="error | skip: an unreadable image (default: data.on_bad_image)"
    ),
    on_small_identity: str = typer.Option(
        None,
        help="error | skip: an identity with too few images, e.g. LFW's one-photo people "
        "(default: data.on_small_identity)",
    ),
    on_duplicate_image: str = typer.Option(
        None,
        help="error | skip | keep: one image under two identities (default: "
        "data.on_duplicate_image)",
    ),
) -> None:
    """Copy a dataset into data/<name> (hard links where the source shares the project's
    filesystem), track it with DVC and use it as data.source. The --on-* choices override
    params.yaml's data.on_* for the check and, with --use, are written there too, so prepare
    reads the dataset the same way."""
    from siamese.stages.data_add import add_dataset

    choices = {
        "on_bad_image": on_bad_image,
        "on_small_identity": on_small_identity,
        "on_duplicate_image": on_duplicate_image,
    }
    try:
        added = add_dataset(path, project, name or None, use, choices)
    except (ParamsError, ValueError, RuntimeError) as err:
        _fail(str(err))
    how = f"{added.linked} file(s) hard-linked, {added.copied} copied"
    typer.echo(
        f"added {path} as {added.source} (tracked by DVC: {added.folder}.dvc; {how} before DVC "
        "cached them)"
    )


@data_app.command("download")
def data_download(
    name: str = typer.Argument(
        ..., help="omniglot-background or omniglot-evaluation (see `siamese data list`)"
    ),
    dest: Path = typer.Option(Path("data"), help="folder to write the archive into"),
    url: str = typer.Option("", help="download from this URL (a mirror, file://...) instead"),
    sha256: str = typer.Option("", help="expected SHA-256 (replaces the pinned checksums)"),
    force: bool = typer.Option(False, help="download again over an existing file"),
) -> None:
    """Download a benchmark archive from its official location and verify its checksum."""

    try:
        result = download(name, dest, url or None, sha256 or None, force)
    except DownloadError as err:
        _fail(str(err), code=1)
    verb = "downloaded" if result["downloaded"] else "already present and verified:"
    typer.echo(f"{verb} {result['path']} (sha256 {result['sha256']})")
    typer.echo(f"to version it: dvc add {result['path']}; to use it: data.source: {result['path']}")


@data_app.command("list")
def data_list() -> None:
    """List the datasets `siamese data download` knows, with their checksums."""

    for a in ARCHIVES.values():
        sums = ", ".join(f"{algo} {digest}" for algo, digest in a.checksums) or "unknown"
        typer.echo(f"{a.name}: {a.description}\n  {a.url}\n  checksums: {sums}")


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    app()
