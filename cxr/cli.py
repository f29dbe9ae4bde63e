"""The `cxr` command line: parses flags into typed settings and calls the code that does the work.

Flags and the configuration are checked before TensorFlow, TFX or Beam is imported (each command
imports them inside its function, after its checks), so a typo is answered at once.
"""
import argparse
import dataclasses
import glob
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Tuple

from cxr import contract, output
from cxr.dataprep.mapping import PRESET_NAMES
from cxr.pipeline.config import PRESETS, load_config

DEFAULT_PRESET = "demo"
# Python loggers of the libraries underneath (absl is TFX's): errors only, unless --verbose.
THIRD_PARTY_LOGGERS = ("absl", "tensorflow", "apache_beam", "tensorflow_transform", "tensorflow_model_analysis",
                       "tensorflow_data_validation", "tfx_bsl", "ml_metadata", "keras_tuner", "kfp", "urllib3")


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet()
    try:
        return args.run(args) or 0
    except (ValueError, RuntimeError, OSError) as error:
        print(f"cxr {args.command}: error: {error}", file=sys.stderr)
        return 2


def entry() -> None:
    """The `cxr` command (and `python -m cxr`): main, then out without Python's and TensorFlow's teardown.

    Once a command has returned there is nothing left to clean up (ML Metadata commits per call, every
    file is closed), yet unloading TensorFlow, gRPC and Beam's modules took 3-5 s of native code after
    `cxr run` printed its summary (faulthandler: no Python frame), on every command that imports them."""
    try:
        code = main()
    except SystemExit as ended:  # argparse's usage errors and --help
        code = ended.code if isinstance(ended.code, int) else (0 if ended.code is None else 2)
        if not isinstance(ended.code, (int, type(None))):
            print(ended.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def quiet() -> None:
    """Hides third-party warnings and TensorFlow's C++ start-up lines (CUDA factories, CPU features).

    Set in the environment as well, for the processes the commands start (Beam's workers, the
    ServingCheck's server). What is left is the pipeline's own output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.simplefilter("ignore")
    for library in THIRD_PARTY_LOGGERS:
        library_log = logging.getLogger(library)
        library_log.setLevel(logging.ERROR)  # and so its child loggers
        # A filter as well: TFX's Transform sets absl's verbosity again during the run.
        library_log.addFilter(_errors_only)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true",
                        help="also show third-party warnings and TensorFlow's start-up messages")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo_data(commands)
    _add_build_tfrecords(commands)
    _add_run(commands)
    _add_convert_dicom(commands)
    _add_predict(commands)
    _add_serve(commands)
    _add_log_proxy(commands)
    _add_dicom_node(commands)
    _add_kfp(commands)
    _add_report(commands)
    _add_monitor(commands)
    _add_feedback(commands)
    return parser


def _add_demo_data(commands) -> None:
    command = commands.add_parser(
        "demo-data", help="write synthetic phantom X-rays in the three datasets' real layouts")
    command.add_argument("--out", required=True, help="folder to write the three dataset trees into")
    from cxr.dataprep.demo_data import DemoDataSpec
    defaults = _defaults(DemoDataSpec)
    command.add_argument("--per-class", type=int, default=defaults["per_class"],
                         help="images per class folder (default %(default)s)")
    command.add_argument("--size", type=int, default=defaults["size"], help="image side in pixels (default %(default)s)")
    command.add_argument("--seed", type=int, default=defaults["seed"])
    command.set_defaults(run=_run_demo_data)


def _run_demo_data(args) -> None:
    from cxr.dataprep.demo_data import DemoDataSpec, write_demo_data
    layout = write_demo_data(DemoDataSpec(out_dir=args.out, per_class=args.per_class,
                                          size=args.size, seed=args.seed))
    for source, root in layout.items():
        print(f"{source}: {root}")


def _add_build_tfrecords(commands) -> None:
    command = commands.add_parser(
        "build-tfrecords", help="turn the dataset downloads into a TFRecord span for ExampleGen")
    command.add_argument("--covid-radiography", metavar="DIR", help="COVID-19 Radiography Database folder")
    command.add_argument("--curated", metavar="DIR", help="Mendeley curated COVID-19 PA dataset folder")
    command.add_argument("--nih", metavar="DIR", help="NIH ChestX-ray14 folder (with Data_Entry_2017.csv)")
    dicom = command.add_argument_group(
        "a hospital's DICOM export", "its labelled radiographs as a source of the span (docs/dicom.md): the "
                                     "records hold the converted PNG and keyed pseudonyms, never an identifier")
    dicom.add_argument("--dicom", metavar="DIR", help="folder of DICOM files (any layout, any names)")
    dicom.add_argument("--dicom-labels", metavar="CSV",
                       help="columns label and file (path under DIR) or sop_instance_uid; needed with --dicom")
    dicom.add_argument("--dicom-source", default="dicom", metavar="NAME",
                       help="the records' source value (default %(default)s; another name must be added to the "
                            "source domain of pipeline/schema/schema.pbtxt)")
    dicom.add_argument("--pseudonym-key-file", metavar="FILE",
                       help="the secret key of the patient pseudonyms (default: $CXR_PSEUDONYM_KEY); keep it "
                            "away from the data, and keep it: the same key links a patient across spans")
    _add_dicom_flags(command)
    command.add_argument("--out", required=True, help="spans are written to OUT/span-N/")
    from cxr.dataprep.config import IngestConfig
    defaults = _defaults(IngestConfig)
    command.add_argument("--span", type=int, default=defaults["span"])
    command.add_argument("--mapping", default="multi-source",
                         help=f"{' | '.join(PRESET_NAMES)} | a YAML file (default multi-source)")
    command.add_argument("--nih-multilabel", action="store_true",
                         help="admit NIH images with several findings when they map to one label "
                              "(e.g. Effusion|Pneumothorax)")
    command.add_argument("--near-duplicate-distance", type=int, default=defaults["near_duplicate_max_distance"],
                         help="Hamming distance at or under which two images are near duplicates; "
                              "-1 keeps exact duplicates only (default %(default)s)")
    command.add_argument("--max-pixels", type=int, default=defaults["max_pixels"],
                         help="quarantine images whose header declares more pixels (default %(default)s)")
    command.add_argument("--overwrite", action="store_true", help="replace an existing span")
    command.add_argument("--beam-arg", action="append", default=[], metavar="FLAG",
                         help="a Beam pipeline flag, e.g. --beam-arg=--direct_num_workers=1 or "
                              "--beam-arg=--runner=FlinkRunner; repeat for several")
    command.set_defaults(run=_run_build_tfrecords)


def _dicom_source(args):
    if not args.dicom:
        if args.dicom_labels:
            raise ValueError("--dicom-labels needs --dicom DIR")
        return None
    if not args.dicom_labels:
        raise ValueError("--dicom needs --dicom-labels CSV (columns label and file or sop_instance_uid)")
    from cxr.dataprep.dicom_source import DicomSource
    from cxr.dicom.pseudonyms import load_key
    key = load_key(args.pseudonym_key_file, data_folders=[args.dicom, args.out])
    return DicomSource(root=args.dicom, labels_file=args.dicom_labels, key=key, source=args.dicom_source,
                       rules=_dicom_rules(args)).with_labels()


def _run_build_tfrecords(args) -> int:
    from cxr.dataprep.build import build_tfrecords
    from cxr.dataprep.config import IngestConfig
    from cxr.dataprep.mapping import ClassMapping

    roots = {"covid_radiography": args.covid_radiography, "curated": args.curated, "nih": args.nih}
    mapping = ClassMapping.from_name_or_file(args.mapping)
    config = IngestConfig(
        source_roots={source: root for source, root in roots.items() if root},
        out_dir=args.out, span=args.span,
        mapping=mapping.with_nih_multilabel(args.nih_multilabel or mapping.nih_multilabel),
        near_duplicate_max_distance=args.near_duplicate_distance, max_pixels=args.max_pixels,
        overwrite=args.overwrite, beam_args=tuple(args.beam_arg), dicom=_dicom_source(args))
    manifest = build_tfrecords(config)
    print(f"\nspan {config.span} written to {config.span_dir}")
    print(output.reconciliation_table(manifest["reconciliation"]))
    print(output.class_by_source_table(manifest["written"]))
    return 0


def _add_configuration(command) -> None:
    """--preset, --config and --set, the same on every command that takes the pipeline's configuration."""
    command.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                         help=f"the settings to start from (default {DEFAULT_PRESET}: small and fast, its folders "
                              f"under demo/; study: the study's 224 px model)")
    command.add_argument("--config", metavar="FILE", help="YAML file overriding the preset's settings")
    command.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                         help="override one setting, e.g. --set training.epochs=5; repeat for several")


def _add_run(commands) -> None:
    command = commands.add_parser(
        "run", help="run the TFX pipeline on this machine (ML Metadata in SQLite, Beam's DirectRunner)")
    _add_configuration(command)
    command.add_argument("--span", type=int, help="the TFRecord span to train on (default: the latest)")
    command.set_defaults(run=_run_pipeline)


def _run_pipeline(args) -> int:
    overrides = list(args.set) + ([f"data.span={args.span}"] if args.span is not None else [])
    config = load_config(args.preset, args.config, overrides)
    _check_spans(config.data.tfrecords_dir, config.data.span)
    from cxr.pipeline.local_runner import run_local

    summary = run_local(config, progress=lambda line: print(line, flush=True))
    print(output.run_summary(summary))
    if summary.interrupted:
        return output.EXIT_INTERRUPTED
    if summary.error:
        return output.EXIT_FAILED
    return 0 if summary.blessed else output.EXIT_NOT_BLESSED


def _check_spans(tfrecords_dir: str, span: Optional[int]) -> None:
    """A local TFRecords folder without the span to read is named before the pipeline starts."""
    if "://" in tfrecords_dir:
        return  # a bucket: ImportExampleGen lists it
    pattern = contract.SPAN_PATTERN.replace("{SPAN}", "*" if span is None else str(span))  # as ExampleGen reads
    if not glob.glob(os.path.join(tfrecords_dir, pattern)):
        which = f"span {span}" if span is not None else "no span"
        raise ValueError(f"{which} under {os.path.abspath(tfrecords_dir)} (data.tfrecords_dir): expected "
                         f"span-N/*{contract.SHARD_SUFFIX}, which `cxr build-tfrecords --out {tfrecords_dir}` writes")


def _add_dicom_flags(command, tf_serving_style: bool = False) -> None:
    """What a DICOM must be to be taken (cxr/dicom/rules.py); `cxr serve` and `cxr log-proxy` spell flags
    TF Serving's way (--dicom_modalities), the other commands with dashes. The same settings either way."""
    from cxr.dicom.rules import DicomRules
    defaults = DicomRules()
    spell = (lambda name: f"--dicom_{name.replace('-', '_')}") if tf_serving_style else (lambda name: f"--dicom-{name}")
    group = command.add_argument_group("DICOM", "what a DICOM file must be to be converted; others are refused "
                                                "with the tag that failed")
    group.add_argument(spell("modalities"), dest="dicom_modalities", type=_codes, default=defaults.modalities,
                       metavar="CODES", help=f"Modality values taken (default {','.join(defaults.modalities)})")
    group.add_argument(spell("view-positions"), dest="dicom_view_positions", type=_codes,
                       default=defaults.view_positions, metavar="CODES",
                       help=f"View Position values taken (default {','.join(defaults.view_positions)}: laterals refused)")
    group.add_argument(spell("allow-missing-view-position"), dest="dicom_allow_missing_view_position",
                       action="store_true", help="take files that state no View Position (default: refused)")


def _codes(text: str) -> Tuple[str, ...]:
    codes = tuple(code.strip().upper() for code in text.split(",") if code.strip())
    if not codes:
        raise argparse.ArgumentTypeError(f"expected comma-separated codes such as CR,DX, got {text!r}")
    return codes


def _dicom_rules(args):
    from cxr.dicom.rules import DicomRules
    return DicomRules(modalities=args.dicom_modalities, view_positions=args.dicom_view_positions,
                      allow_missing_view_position=args.dicom_allow_missing_view_position)


def _add_convert_dicom(commands) -> None:
    command = commands.add_parser(
        "convert-dicom", help="write the PNG the model would receive for each DICOM file, or say why it is refused",
        description="Converts DICOM radiographs exactly as ingestion, cxr predict and the serving fronts do "
                    "(Modality LUT, VOI window, MONOCHROME1 inverted, 16-bit PNG where Bits Stored > 8): the "
                    "way to see what the model sees. The PNGs hold patient images: they are written owner-only.")
    command.add_argument("files", nargs="+", metavar="FILE", help="DICOM files")
    command.add_argument("--out", required=True, help="folder to write FILE's name + .png into")
    _add_dicom_flags(command)
    command.set_defaults(run=_run_convert_dicom)


def _run_convert_dicom(args) -> int:
    from cxr.dicom.convert import convert_files
    results = convert_files(args.files, args.out, _dicom_rules(args))
    print(output.conversion_table(results))
    return 1 if any(result.error for result in results) else 0


def _add_predict(commands) -> None:
    command = commands.add_parser("predict", help="classify X-rays through TF Serving's REST API (or cxr serve)")
    command.add_argument("images", nargs="+", metavar="IMAGE",
                         help="PNG, JPEG or DICOM files (DICOM converted here, as ingestion does)")
    from cxr.serving.client import BATCH_SIZE, ServingClient
    defaults = _defaults(ServingClient)
    command.add_argument("--url", default=defaults["url"], help="the server (default %(default)s)")
    command.add_argument("--model", default=defaults["model"], help="model name (default %(default)s)")
    which = command.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a model version (default: the latest)")
    which.add_argument("--label", help="a version label from the server's model config, e.g. stable or canary")
    command.add_argument("--explain", metavar="OUT_DIR", help="also write Grad-CAM overlays here, one PNG per image")
    command.add_argument("--json", action="store_true", help="print JSON instead of a table")
    command.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per request (default %(default)s)")
    command.add_argument("--timeout", type=float, default=defaults["timeout_s"],
                         help="seconds per request (default %(default)s)")
    command.add_argument("--retries", type=int, default=defaults["retries"],
                         help="retries while the server refuses connections or answers 503 (default %(default)s)")
    command.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                         help="first wait up to SECONDS for the model to be AVAILABLE (default: do not wait)")
    command.add_argument("--ca-file", help="an https:// front: the CA its certificate must chain to")
    command.add_argument("--cert-file", help="this client's certificate, where the front asks for one (mutual TLS)")
    command.add_argument("--key-file", help="its private key")
    _add_dicom_flags(command)
    command.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from cxr.serving.client import ServingClient
    from cxr.serving.results import write_overlays

    for path in args.images:
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such image file")
    client = ServingClient(url=args.url, model=args.model, version=args.version, label=args.label,
                           timeout_s=args.timeout, retries=args.retries, dicom_rules=_dicom_rules(args),
                           ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)
    if args.wait:
        client.wait_until_available(args.wait)
    # `explain` answers with the probabilities too, so one request per batch serves both.
    signature = contract.EXPLAIN_SIGNATURE if args.explain else contract.PREDICT_SIGNATURE
    results = list(client.predict_files(args.images, signature, batch_size=args.batch_size))
    overlays = write_overlays(results, args.explain) if args.explain else {}
    print(output.predictions_json(results, overlays) if args.json else output.prediction_table(results))
    if overlays and not args.json:
        print(f"\nGrad-CAM overlays: {len(overlays)} written to {args.explain}")
    return 1 if any(result.error for result in results) else 0


def _add_serve(commands) -> None:
    command = commands.add_parser(
        "serve", help="a development server with TF Serving's REST API (production runs TF Serving)",
        description="A development server with TF Serving's REST API. Its flags, as cxr log-proxy's and unlike the "
                    "other commands', keep TF Serving's names (--model_base_path, --rest_api_port, ...), a promise "
                    "that the same lines work with either.")
    from cxr.serving.server_settings import ServerSettings
    defaults = ServerSettings()
    demo_model = os.path.join(PRESETS[DEFAULT_PRESET].serving_dir, PRESETS[DEFAULT_PRESET].model_name)
    command.add_argument("--model_base_path", default=demo_model,
                         help=f"the pushed model folder, <serving_dir>/<model_name> (default {demo_model}, "
                              f"where `make demo` pushes)")
    command.add_argument("--model_name", default=defaults.model_name, help="(default %(default)s)")
    command.add_argument("--model_config_file", help="a ModelServerConfig text proto: name, base path, "
                                                     "version policy and labels (overrides the two above)")
    command.add_argument("--rest_api_port", type=int, default=defaults.rest_api_port,
                         help="(default %(default)s; 0 picks a free port)")
    command.add_argument("--file_system_poll_wait_seconds", type=float, default=defaults.file_system_poll_wait_seconds,
                         help="how often to look for newly pushed versions (default %(default)s)")
    command.add_argument("--rest_api_num_threads", dest="workers", metavar="N", type=int, default=defaults.workers,
                         help="requests computed at once (default %(default)s)")
    command.add_argument("--enable_model_warmup", type=_boolean, default=defaults.enable_model_warmup,
                         help="replay assets.extra/tf_serving_warmup_requests on load (default %(default)s)")
    _add_front_flags(command, defaults, "computed")
    _add_request_log_flags(command, defaults)
    _add_tls_flags(command, defaults)
    _add_dicom_flags(command, tf_serving_style=True)
    command.set_defaults(run=_run_serve)


def _add_front_flags(command, defaults, handled: str) -> None:
    """The flags of serving/server_settings.py's FrontFlags, which `cxr serve` and `cxr log-proxy` share."""
    command.add_argument("--host", default=defaults.host,
                         help="address to bind (default %(default)s, this machine only; 0.0.0.0 in a pod, with TLS)")
    command.add_argument("--max_body_bytes", type=int, default=defaults.max_body_bytes,
                         help=f"refuse larger request bodies with HTTP 413 (default {defaults.max_body_bytes >> 20} "
                              f"MiB: 16 X-rays in base64)")
    command.add_argument("--max_images_per_request", type=int, default=defaults.max_images_per_request,
                         help=f"refuse requests with more images with HTTP 400, before any is decoded or "
                              f"{handled} (default %(default)s)")
    command.add_argument("--read_timeout_seconds", type=float, default=defaults.read_timeout_seconds,
                         help="a request's headers must arrive within this; idle connections close after it "
                              "(default %(default)s)")
    command.add_argument("--body_timeout_seconds", type=float, default=defaults.body_timeout_seconds,
                         help="a request's body must arrive within this (default %(default)s)")
    command.add_argument("--drain_seconds", type=float, default=defaults.drain_seconds,
                         help="on SIGTERM, let the requests under way finish for at most this long "
                              "(default %(default)s)")
    command.add_argument("--address_file", help="once answering, write the URL to this file (with port 0, how a "
                                                "caller learns the port)")


def _add_tls_flags(command, defaults) -> None:
    tls = command.add_argument_group(
        "TLS", "HTTPS with the server's certificate, and mutual TLS: only callers with a certificate the client CA "
               "signed (files a Kubernetes Secret mounts; re-read when they change)")
    tls.add_argument("--tls_cert_file", help="the server's certificate (PEM, with its chain)")
    tls.add_argument("--tls_key_file", help="its private key (PEM)")
    tls.add_argument("--tls_client_ca_file", help="the CA whose client certificates are let in (mutual TLS)")
    tls.add_argument("--tls_reload_seconds", type=float, default=defaults.tls_reload_seconds,
                     help="how often to look for a rotated certificate (default %(default)s)")
    tls.add_argument("--plaintext_behind_mesh", action="store_true",
                     help="plain HTTP on a non-loopback --host: only where a service mesh (Istio, Linkerd) "
                          "terminates mutual TLS for the pod")


def _add_request_log_flags(command, defaults) -> None:
    logged = command.add_argument_group(
        "request log", "a sample of the answered requests as TF Serving's PredictionLog records, for monitoring; "
                       "they hold patient images, so keep the root where the images may be kept")
    logged.add_argument("--request_log_root", help="a folder or gs:// path to log under (default: no log)")
    logged.add_argument("--request_log_sample_rate", type=float, default=defaults.request_log_sample_rate,
                        help="share of answered requests logged (default %(default)s)")
    logged.add_argument("--request_log_label_rate", dest="request_log_label_rates", action="append",
                        default=list(defaults.request_log_label_rates), metavar="LABEL=RATE",
                        help="another share for requests to a version label, e.g. canary=1.0; repeat for several")
    logged.add_argument("--request_log_max_age_hours", type=float, default=defaults.request_log_max_age_hours,
                        help="log files older than this are removed (default %(default)s: 30 days)")
    logged.add_argument("--request_log_max_total_bytes", type=int, default=defaults.request_log_max_total_bytes,
                        help="the oldest log files are removed past this total (default %(default)s: 20 GiB)")


def _settings_from(cls, args):
    """A settings dataclass from the flags named after its fields (repeated flags arrive as lists)."""
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)}
    return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in given.items()})


def _run_serve(args) -> None:
    from cxr.serving.dev_server import serve
    from cxr.serving.server_settings import ServerSettings
    serve(_settings_from(ServerSettings, args))


def _add_log_proxy(commands) -> None:
    from cxr.serving.server_settings import ProxySettings
    defaults = ProxySettings()
    command = commands.add_parser(
        "log-proxy", help="pass TF Serving's REST API through and log a sample of what it answers",
        description="A front for TF Serving's REST API (a sidecar in the serving pod): every request goes to "
                    "TF Serving as it came, and a sample of the answered :predict requests is written as "
                    "PredictionLog records for `cxr monitor`. Logging never slows or fails a request.")
    command.add_argument("--upstream", default=defaults.upstream, help="TF Serving's REST address (default %(default)s)")
    command.add_argument("--port", type=int, default=defaults.port, help="(default %(default)s; 0 picks a free port)")
    command.add_argument("--upstream_timeout_seconds", type=float, default=defaults.upstream_timeout_seconds,
                         help="TF Serving's answer must come within this (default %(default)s)")
    command.add_argument("--workers", type=int, default=defaults.workers,
                         help="requests forwarded at once (default %(default)s)")
    _add_front_flags(command, defaults, "forwarded")
    _add_request_log_flags(command, defaults)
    _add_tls_flags(command, defaults)
    _add_dicom_flags(command, tf_serving_style=True)
    command.set_defaults(run=_run_log_proxy)


def _run_log_proxy(args) -> None:
    from cxr.serving.log_proxy import serve_proxy
    from cxr.serving.server_settings import ProxySettings
    serve_proxy(_settings_from(ProxySettings, args))


def _defaults(cls) -> Dict[str, object]:
    """{field: default} of a settings dataclass: the flags take their defaults from the type that owns them."""
    return {field.name: field.default for field in dataclasses.fields(cls) if field.default is not dataclasses.MISSING}


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def _add_dicom_node(commands) -> None:
    command = commands.add_parser(
        "dicom-node", help="a DICOM node: the PACS sends X-rays (C-STORE), it answers with structured reports",
        description="A DICOM C-STORE SCP that answers each CR/DX chest X-ray with a DICOM Structured Report of the "
                    "served model's result, sent back by C-STORE (--store-to) or STOW-RS (--stow-url). Images wait "
                    "in a disk queue until answered (docs/dicom.md, 'The DICOM node').")
    from cxr.serving.dicom_node.settings import DEFAULT_PORT, ModelServer, NodeSettings
    defaults, server = _defaults(NodeSettings), _defaults(ModelServer)
    command.add_argument("--queue-dir", required=True,
                         help="the disk queue: received images until answered (patient data: owner-only)")
    command.add_argument("--ae-title", default=defaults["ae_title"], help="the node's AE title (default %(default)s)")
    command.add_argument("--host", default=defaults["host"], help="address to listen on (default %(default)s)")
    command.add_argument("--port", type=int, default=DEFAULT_PORT, help="DICOM port (default %(default)s)")
    where = command.add_mutually_exclusive_group(required=True)
    where.add_argument("--store-to", metavar="AE@HOST:PORT", help="send the reports by C-STORE to this peer")
    where.add_argument("--stow-url", metavar="URL", help="send the reports by STOW-RS to this DICOMweb root")
    command.add_argument("--stow-token-file", help="a bearer token for --stow-url, read at each send")
    command.add_argument("--stow-ca-file", help="an https:// --stow-url: the CA its certificate must chain to")
    command.add_argument("--url", default=server["url"], help="the model server (default %(default)s)")
    command.add_argument("--model", default=server["model"], help="model name (default %(default)s)")
    command.add_argument("--ca-file", help="an https:// model server: the CA its certificate must chain to")
    command.add_argument("--cert-file", help="this node's client certificate, where the front asks for one")
    command.add_argument("--key-file", help="its private key")
    command.add_argument("--max-queue-items", type=int, default=defaults["max_queue_items"],
                         help="images waiting at most; past it C-STORE answers out of resources (default %(default)s)")
    command.add_argument("--max-queue-mib", type=int, default=defaults["max_queue_bytes"] >> 20,
                         help="MiB of images waiting at most (default %(default)s)")
    command.add_argument("--retry-max-s", type=float, default=defaults["retry_max_s"],
                         help="the longest wait between tries while a peer is down (default %(default)s)")
    command.add_argument("--audit-log", help="the audit's JSON lines (default <queue-dir>/audit.jsonl)")
    command.add_argument("--grad-cam", action="store_true",
                         help="also send the Grad-CAM overlay as a Secondary Capture in the same study (default off)")
    _add_dicom_flags(command)
    command.set_defaults(run=_run_dicom_node)


def _run_dicom_node(args) -> int:
    import signal
    import threading

    from cxr.serving.dicom_node.node import DicomNode
    from cxr.serving.dicom_node.settings import CStoreDestination, ModelServer, NodeSettings, StowDestination
    if args.store_to:
        if args.stow_token_file or args.stow_ca_file:
            raise ValueError("--stow-token-file and --stow-ca-file go with --stow-url, not --store-to")
        destination = CStoreDestination.parse(args.store_to)
    else:
        destination = StowDestination(args.stow_url, token_file=args.stow_token_file, ca_file=args.stow_ca_file)
    settings = NodeSettings(
        queue_dir=args.queue_dir, destination=destination, ae_title=args.ae_title, host=args.host, port=args.port,
        model_server=ModelServer(url=args.url, model=args.model, ca_file=args.ca_file, cert_file=args.cert_file,
                                 key_file=args.key_file),
        dicom_rules=_dicom_rules(args), max_queue_items=args.max_queue_items,
        max_queue_bytes=args.max_queue_mib << 20, retry_max_s=args.retry_max_s, audit_log=args.audit_log,
        grad_cam=args.grad_cam)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cxr.dicom_node").setLevel(logging.INFO)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    node = DicomNode(settings).start()
    print(f"cxr dicom-node: {settings.ae_title} on port {node.port}", flush=True)
    stopped.wait()
    node.stop()
    return 0


def _add_kfp(commands) -> None:
    kfp = commands.add_parser("kfp", help="Kubeflow Pipelines: compile, submit, schedule retraining")
    actions = kfp.add_subparsers(dest="kfp_command", required=True)
    compile_ = actions.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines or Vertex AI")
    _add_configuration(compile_)
    compile_.add_argument("--target", choices=("kfp", "vertex"), default="kfp",
                          help="kfp: open-source Kubeflow Pipelines 2.x, one container task per TFX node; "
                               "vertex: a Vertex AI PipelineJob JSON from KubeflowV2DagRunner (default kfp)")
    compile_.add_argument("--job", choices=("training", "monitoring"), default="training",
                          help="training: the TFX pipeline; monitoring: cxr monitor on the request log "
                               "(monitoring.logs_root) as a one-task pipeline for a recurring run, kfp only "
                               "(default training)")
    compile_.add_argument("--out", default="build", help="folder to write pipeline.yaml / pipeline.json / "
                                                         "monitoring.yaml into")
    compile_.set_defaults(run=_run_kfp_compile)

    submit = _kfp_action(actions, "submit", "upload the compiled pipeline as a new version and start a run",
                         _run_kfp_submit)
    _add_upload(submit)
    submit.add_argument("--run-name", help="(default: the pipeline name and the time)")

    schedule = _kfp_action(actions, "schedule", "upload a new version and create a recurring run",
                           _run_kfp_schedule)
    _add_upload(schedule)
    schedule.add_argument("--cron", required=True,
                          help="KFP's six-field cron, seconds first: '0 0 3 * * *' is 03:00 every day")
    schedule.add_argument("--name", required=True, help="the recurring run's name")
    schedule.add_argument("--max-concurrency", type=int, default=1, help="runs at once, 1 to 10 (default 1)")
    catchup = schedule.add_mutually_exclusive_group()
    catchup.add_argument("--no-catchup", dest="catchup", action="store_false", default=False,
                         help="skip the runs missed while paused (the default)")
    catchup.add_argument("--catchup", dest="catchup", action="store_true",
                         help="run the missed intervals after a pause")

    schedules = _kfp_action(actions, "schedules", "list the recurring runs", _run_kfp_schedules)
    schedules.add_argument("--experiment", help="only this experiment's")

    unschedule = _kfp_action(actions, "unschedule", "delete a recurring run (they cannot be changed in place)",
                             _run_kfp_unschedule)
    unschedule.add_argument("name", help="the recurring run's name or id")


def _kfp_action(actions, name: str, help_text: str, run):
    # No abbreviations: `--token VALUE`, once a flag, would be taken for --token-file and name the secret.
    action = actions.add_parser(name, help=help_text, allow_abbrev=False)
    _add_connection(action)
    action.set_defaults(run=run)
    return action


def _add_upload(action) -> None:
    action.add_argument("--package", default="build/pipeline.yaml",
                        help="the compiled pipeline (default build/pipeline.yaml, from cxr kfp compile)")
    name = PRESETS[DEFAULT_PRESET].name
    action.add_argument("--pipeline-name", default=name, help="the pipeline's name in KFP (default %(default)s)")
    action.add_argument("--experiment", default=name, help="KFP experiment (default %(default)s)")
    action.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a pipeline parameter for the run; repeat for several")


def _add_connection(action) -> None:
    action.add_argument("--host", help="the KFP API endpoint, e.g. http://localhost:8080 (port-forward) or the "
                                       "Kubeflow gateway; without it kfp.Client finds the API in-cluster (service "
                                       "account token, KF_PIPELINES_SA_TOKEN_PATH) or through your kube config")
    action.add_argument("--namespace", help="Kubeflow profile namespace (multi-user deployments)")
    action.add_argument("--token-file", help="a file holding a bearer token, sent as Authorization: Bearer "
                                             "(default: $CXR_KFP_TOKEN); never on the command line, where ps shows it")
    action.add_argument("--cookies-file", help="a file holding session cookies, e.g. 'authservice_session=...' "
                                               "behind Dex / IAP (default: $CXR_KFP_COOKIES)")


def _run_kfp_compile(args) -> None:
    config = load_config(args.preset, args.config, args.set)
    from cxr.kubeflow.runner import compile_pipeline  # checks the configuration before it imports kfp or TFX
    path = compile_pipeline(config, args.target, args.out, args.job)
    print(f"compiled the {args.job} job for {args.target}: {path}")


def _client(args):
    from cxr.kubeflow.client import Connection, connect, secret
    return connect(Connection(host=args.host, namespace=args.namespace,
                              token=secret(args.token_file, "CXR_KFP_TOKEN", "--token-file"),
                              cookies=secret(args.cookies_file, "CXR_KFP_COOKIES", "--cookies-file")))


def _checked_package(args) -> Tuple[str, dict]:
    """The compiled pipeline and the run's parameters, typed as it declares them; refused before connecting
    if Kubeflow Pipelines would refuse them."""
    from cxr.kubeflow.cluster_checks import check_package, check_run_changes, package_params
    if not os.path.isfile(args.package):
        raise ValueError(f"{args.package}: no compiled pipeline; run `cxr kfp compile` first or give --package")
    params = package_params(args.package, _param_texts(args.param))
    check_package(args.package, params)
    check_run_changes(args.package, params)  # the config parameter's changes, as each task will read them
    return args.package, params


def _param_texts(pairs: List[str]) -> Dict[str, str]:
    texts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {pair!r} must look like key=value")
        texts[key] = value
    return texts


def _run_kfp_submit(args) -> None:
    from cxr.kubeflow.client import api_errors, submit
    package, params = _checked_package(args)
    with api_errors(args.host):
        submitted = submit(_client(args), package, args.pipeline_name, args.experiment, params,
                           run_name=args.run_name)
    print(f"run {submitted.run_id} started (pipeline version {submitted.version_id}): {submitted.url}")


def _run_kfp_schedule(args) -> None:
    from cxr.kubeflow.client import api_errors, schedule, validate_cron
    from cxr.kubeflow.cluster_checks import check_max_concurrency
    cron = validate_cron(args.cron)  # before connecting: building kfp.Client already asks the server
    check_max_concurrency(args.max_concurrency)
    package, params = _checked_package(args)
    with api_errors(args.host):
        recurring_run_id = schedule(_client(args), package, args.pipeline_name, args.experiment, cron,
                                    name=args.name, max_concurrency=args.max_concurrency, catchup=args.catchup,
                                    params=params)
    print(f"recurring run {args.name!r} ({recurring_run_id}) created: cron '{cron}'")


def _run_kfp_schedules(args) -> None:
    from cxr.kubeflow.client import api_errors, list_schedules
    with api_errors(args.host):
        print(output.schedules_table(list_schedules(_client(args), args.experiment)))


def _run_kfp_unschedule(args) -> None:
    from cxr.kubeflow.client import api_errors, unschedule
    with api_errors(args.host):
        deleted = unschedule(_client(args), args.name)
    print(f"recurring run {deleted.name!r} ({deleted.id}) deleted")


def _add_report(commands) -> None:
    command = commands.add_parser("report", help="write a static HTML report of a pipeline run",
                                  description="Everything else comes from what the run recorded in ML Metadata: "
                                              "the span it read, the gate it faced, the settings it trained with.")
    where = command.add_mutually_exclusive_group()
    where.add_argument("--metadata", default=PRESETS[DEFAULT_PRESET].metadata_path,
                       help=f"the run's ML Metadata SQLite file (default {PRESETS[DEFAULT_PRESET].metadata_path}, "
                            f"where `make demo` runs)")
    where.add_argument("--metadata-grpc", metavar="HOST:PORT",
                       help="ML Metadata's gRPC service instead, e.g. a port-forward of Kubeflow Pipelines' "
                            "metadata-grpc-service (kubectl -n kubeflow port-forward svc/metadata-grpc-service 8080)")
    command.add_argument("--run", dest="run_id", default="latest",
                         help="latest or a run id from ML Metadata (default latest)")
    command.add_argument("--out", default="demo/report", help="folder to write index.html into (default demo/report)")
    command.add_argument("--gallery-all-sources", action="store_true",
                         help="let the gallery show a site's (DICOM) and served images too: patient images, in a "
                              "report whoever reads --out can read (default: the public datasets' only)")
    command.set_defaults(run=_run_report)


def _run_report(args) -> None:
    if not args.metadata_grpc and not os.path.isfile(args.metadata):
        raise ValueError(f"no ML Metadata at {args.metadata}: `cxr run` writes it at the configuration's "
                         f"metadata_path; give that file with --metadata")
    from cxr.pipeline.metadata_reader import grpc_connection, sqlite_connection
    from cxr.pipeline.report.collect import collect
    from cxr.pipeline.report.render import write_report
    connection = grpc_connection(args.metadata_grpc) if args.metadata_grpc else sqlite_connection(args.metadata)
    path = write_report(collect(connection, args.run_id, args.gallery_all_sources), args.out)
    print(f"report: {os.path.abspath(path)}")


def _add_monitor(commands) -> None:
    command = commands.add_parser(
        "monitor", help="compare what the served model received (its request log) with its training split",
        description="Cuts the logged requests between --since and --until into windows and judges each against "
                    "the training split, as the model version that answered sees it (TFDV skew, MMD on "
                    "embeddings), against the ServingCheck's answers on its test split, and against the window "
                    "before (TFDV drift). Each version's training split and test answers come from the pipeline "
                    "run that pushed it, in ML Metadata, unless --training is given. Writes monitoring.json, "
                    f"index.html and queue/ (images to label) into --out. Exit status {output.EXIT_ALARM} when a "
                    "window raises an alarm.")
    _add_configuration(command)
    command.add_argument("--logs", help="the request log root (cxr serve's or cxr log-proxy's --request_log_root; "
                                        "a folder or gs://; default monitoring.logs_root of the configuration)")
    where = command.add_mutually_exclusive_group()
    where.add_argument("--metadata", help="the pipeline's ML Metadata SQLite file (default metadata_path of the "
                                          "configuration)")
    where.add_argument("--metadata-grpc", metavar="HOST:PORT", help="ML Metadata's gRPC service instead")
    where.add_argument("--training", action="append", metavar="FILES",
                       help="instead of ML Metadata: the raw TFRecords of the served model's training split, a glob, "
                            "e.g. 'demo/pipeline/ImportExampleGen/examples/<id>/Split-train/*'; repeat for several "
                            "(there are no test answers to compare with then)")
    command.add_argument("--model_base_path", help="the pushed model folder whose versions answered (default "
                                                   "<serving_dir>/<model_name> of the configuration)")
    command.add_argument("--since", help="start, UTC: ISO 8601 (2026-12-02T08:00) or seconds since 1970 "
                                         "(default: --until minus monitoring.lookback_s)")
    command.add_argument("--until", help="end, the same way (default: now)")
    command.add_argument("--window", type=float, metavar="SECONDS",
                         help="length of each window (default monitoring.window_s)")
    command.add_argument("--out", default="demo/monitoring", help="folder to write into (default %(default)s)")
    command.set_defaults(run=_run_monitor)


def _run_monitor(args) -> int:
    from cxr.monitoring.moments import monitored_span
    config = load_config(args.preset, args.config, args.set)
    window_s = args.window or config.monitoring.window_s
    settings = dataclasses.replace(config.monitoring, logs_root=args.logs or config.monitoring.logs_root,
                                   window_s=window_s, lookback_s=max(config.monitoring.lookback_s, window_s))
    if not settings.logs_root:
        raise ValueError("no request log: give --logs or set monitoring.logs_root")
    since, until = monitored_span(args.since, args.until, settings.lookback_s)
    model_base_path = args.model_base_path or os.path.join(config.serving_dir, config.model_name)
    sources = _version_sources(args, config)
    from cxr.monitoring.monitor import monitor
    result = monitor(model_base_path, sources, since, until, settings, args.out)
    print(output.monitoring_summary(result, args.out))
    return output.EXIT_ALARM if result["alarm"] else 0


def _version_sources(args, config):
    """Where each served version's training split (and test answers) lie: --training, or ML Metadata."""
    if args.training:
        import tensorflow as tf
        from cxr.monitoring.monitor import VersionSources
        training = sorted({path for pattern in args.training for path in tf.io.gfile.glob(pattern)})
        if not training:
            raise ValueError(f"--training {args.training}: no file matches")
        return lambda version: VersionSources(training, origin="--training")
    from cxr.pipeline.metadata_reader import grpc_connection, sqlite_connection
    from cxr.pipeline.served_versions import sources_from_metadata
    if args.metadata_grpc:
        return sources_from_metadata(grpc_connection(args.metadata_grpc))
    path = args.metadata or config.metadata_path
    if not os.path.isfile(path):
        raise ValueError(f"no ML Metadata at {path}: give the pipeline's with --metadata or --metadata-grpc, or the "
                         f"training split with --training")
    return sources_from_metadata(sqlite_connection(path))


def _add_feedback(commands) -> None:
    from cxr.dataprep.config import IngestConfig
    ingest = _defaults(IngestConfig)
    default_dir = PRESETS[DEFAULT_PRESET].data.tfrecords_dir
    command = commands.add_parser(
        "feedback", help="labelled images the served model received -> a new span for the next run",
        description="Takes confirmed labels (a CSV of sha256,label[,patient_id]) of images cxr monitor queued "
                    "(--images, its queue/ folder) and publishes a new span: the latest span's records and the new "
                    "images (source 'served'), de-duplicated against the span and each other as ingestion does. "
                    "The next `cxr run` (or scheduled run) trains on it.")
    command.add_argument("--labels", required=True, help="CSV with the columns sha256,label[,patient_id]")
    command.add_argument("--images", required=True, help="folder holding the labelled images (cxr monitor's queue/)")
    command.add_argument("--tfrecords-dir", default=default_dir, help="the spans' folder (default %(default)s)")
    command.add_argument("--from-span", type=int, help="the span to extend (default: the latest)")
    command.add_argument("--span", type=int, help="the new span's number (default: the latest plus one)")
    command.add_argument("--near-duplicate-distance", type=int,
                         help="as cxr build-tfrecords (default: the setting the extended span was built with, "
                              "from its manifest)")
    command.set_defaults(run=_run_feedback)


def _run_feedback(args) -> None:
    from cxr.dataprep.feedback import find_images, latest_span, read_labels, write_feedback_span

    confirmed = find_images(read_labels(args.labels), args.images)
    latest = latest_span(args.tfrecords_dir)
    from_span = latest if args.from_span is None else args.from_span
    span = latest + 1 if args.span is None else args.span
    manifest = write_feedback_span(confirmed, args.tfrecords_dir, from_span, span, args.near_duplicate_distance)
    print(output.feedback_summary(manifest))
