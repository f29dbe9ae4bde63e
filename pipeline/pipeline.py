"""`create_pipeline(config)`: every TFX component, wired once for every runner.

Pure: it builds the pipeline object and touches nothing. Runners (local_runner.py,
and the Kubeflow runner in kubeflow/) decide where and how it runs.
"""
import dataclasses
import os

from tfx import v1 as tfx

from cxr import contract
from cxr.contract import Nodes
from cxr.components import evaluation
from cxr.components import drift
from cxr.components.drift import DriftCheck
from cxr.components.serving_check import ServingCheck
from cxr.components.settings import TRAINER_KEY, TUNER_KEY, to_json
from cxr.components.tuner import Tuner
from cxr.components.validation_gate import ValidationGate
from cxr.pipeline import fingerprint
from cxr.pipeline.config import PipelineConfig

PREPROCESSING_FN = "cxr.components.transform.preprocessing_fn"
RUN_FN = "cxr.components.trainer.run_fn"
TUNER_FN = "cxr.components.tuner.tuner_fn"
CODE_FINGERPRINT = "code_fingerprint"
CURATED_SCHEMA_DIR = os.path.join(os.path.dirname(__file__), "schema")


def create_pipeline(config: PipelineConfig, metadata_connection_config=None) -> tfx.dsl.Pipeline:
    """The pipeline; ML Metadata's connection is the runner's (SQLite locally, the cluster's on Kubeflow)."""
    example_gen = _example_gen(config)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"]).with_id(Nodes.STATISTICS_GEN)
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"]).with_id(Nodes.SCHEMA_GEN)
    curated_schema = tfx.dsl.Importer(source_uri=CURATED_SCHEMA_DIR, artifact_type=tfx.types.standard_artifacts.Schema,
                                      reimport=False).with_id(Nodes.CURATED_SCHEMA)
    schema = curated_schema.outputs["result"]
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema).with_id(Nodes.EXAMPLE_VALIDATOR)
    validation_gate = _custom(
        ValidationGate, config.validation, anomalies=example_validator.outputs["anomalies"],
        statistics=statistics_gen.outputs["statistics"], examples=example_gen.outputs["examples"],
        tfrecords_dir=config.data.tfrecords_dir).with_id(Nodes.VALIDATION_GATE)
    # The last accepted span's statistics, resolved as the baseline model is; the Importer's empty one before the
    # first (components/drift.py says why).
    no_drift_baseline = tfx.dsl.Importer(
        source_uri=drift.no_baseline_uri(config.pipeline_root), artifact_type=drift.DriftBaseline, reimport=False,
        custom_properties={drift.NO_BASELINE: 1}).with_id(Nodes.NO_DRIFT_BASELINE)
    drift_baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        baseline=tfx.dsl.Channel(type=drift.DriftBaseline)).with_id(Nodes.LATEST_DRIFT_BASELINE)
    drift_baseline.add_upstream_node(no_drift_baseline)
    drift_check = _custom(
        DriftCheck, config.drift, examples=example_gen.outputs["examples"],
        statistics=statistics_gen.outputs["statistics"], schema=schema,
        baseline=drift_baseline.outputs["baseline"]).with_id(Nodes.DRIFT_CHECK)
    drift_baseline_gen = drift.DriftBaselineGen(
        examples=example_gen.outputs["examples"], statistics=statistics_gen.outputs["statistics"],
        **_code_of(drift.DriftBaselineGen)).with_id(Nodes.DRIFT_BASELINE_GEN)
    drift_baseline_gen.add_upstream_node(drift_check)
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema, preprocessing_fn=PREPROCESSING_FN,
        custom_config={"image_size": config.model.image_size, **_code_of(PREPROCESSING_FN)}).with_id(Nodes.TRANSFORM)
    transform.add_upstream_node(validation_gate)
    transform.add_upstream_node(drift_check)
    training_inputs = dict(
        examples=transform.outputs["transformed_examples"], transform_graph=transform.outputs["transform_graph"],
        schema=schema, train_args=tfx.proto.TrainArgs(splits=[contract.TRAIN]),
        eval_args=tfx.proto.EvalArgs(splits=[contract.EVAL]))
    tuner = None
    if config.tuner.enabled:
        tuner = Tuner(tuner_fn=TUNER_FN, **training_inputs, custom_config={
            **trainer_settings(config), TUNER_KEY: dataclasses.asdict(config.tuner), **_code_of(TUNER_FN)}
        ).with_id(Nodes.TUNER)
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN, **training_inputs, custom_config={**trainer_settings(config), **_code_of(RUN_FN)},
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None).with_id(Nodes.TRAINER)
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(Nodes.LATEST_BLESSED_MODEL)
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"], example_splits=[contract.TEST],
        eval_config=evaluation.eval_config(config.gate)).with_id(Nodes.EVALUATOR)
    serving_check = _custom(
        ServingCheck, config.gate, model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        evaluation=evaluator.outputs["evaluation"]).with_id(Nodes.SERVING_CHECK)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        infra_blessing=serving_check.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=os.path.join(config.serving_dir, config.model_name)))).with_id(Nodes.PUSHER)
    return tfx.dsl.Pipeline(
        pipeline_name=config.name, pipeline_root=config.pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, curated_schema, example_validator,
                    validation_gate, no_drift_baseline, drift_baseline, drift_check, drift_baseline_gen, transform,
                    *([tuner] if tuner else []), trainer, baseline,
                    evaluator, serving_check, pusher],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_args))


def _example_gen(config: PipelineConfig) -> tfx.components.ImportExampleGen:
    buckets = dict(zip(contract.SPLITS, config.data.split_buckets))
    range_config = None
    if config.data.span is not None:
        range_config = tfx.proto.RangeConfig(static_range=tfx.proto.RangeConfig.StaticRange(
            start_span_number=config.data.span, end_span_number=config.data.span))
    return tfx.components.ImportExampleGen(
        input_base=config.data.tfrecords_dir,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="all", pattern=contract.SPAN_PATTERN)]),
        # Split by patient: no patient's images straddle train, eval and test.
        output_config=tfx.proto.Output(split_config=tfx.proto.SplitConfig(
            splits=[tfx.proto.SplitConfig.Split(name=name, hash_buckets=count) for name, count in buckets.items()],
            partition_feature_name=contract.PATIENT_ID)),
        range_config=range_config).with_id(Nodes.EXAMPLE_GEN)


def trainer_settings(config: PipelineConfig) -> dict:
    """The Trainer's (and the Tuner's) settings, as their custom_config carries them."""
    return {TRAINER_KEY: dataclasses.asdict(config.trainer_settings())}


def _custom(component, settings, **arguments):
    """A custom component of components/ with its settings section whole (one JSON parameter, which it reads
    back with settings.from_json) and the fingerprint of its code."""
    return component(**arguments, settings=to_json(settings), **_code_of(component))


def _code_of(component_code) -> dict:
    """{"code_fingerprint": digest} of the module a component runs (a custom component, or the dotted path of a
    module function) and of every project module it imports.

    TFX's cache key holds a component's executor, parameters and a module_file's content
    (tfx/orchestration/portable/cache_utils.py, get_cache_context), not the code behind a function
    component or a dotted function path: this digest among the parameters makes an edit of that code
    a cache miss for the components that run it, and for no other."""
    module = component_code.rpartition(".")[0] if isinstance(component_code, str) else component_code.__module__
    return {CODE_FINGERPRINT: code_fingerprint(module)}


def code_fingerprint(module: str) -> str:
    return fingerprint.digest(fingerprint.imported_modules([module]))
