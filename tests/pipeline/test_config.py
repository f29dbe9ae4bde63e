import pytest

from cxr.pipeline.config import PRESETS, ConfigError, load_config


def test_study_preset_is_the_study():
    study = load_config("study")
    assert study.model.image_size == 224
    assert study.model.filters == (64, 128, 256, 512) and study.model.dense_units == (512, 1024)
    assert (study.model.dropout, study.training.learning_rate, study.training.batch_size) == (0.3, 1e-4, 16)
    assert (study.training.epochs, study.training.early_stopping_patience) == (25, 10)


def test_demo_preset_is_smaller_and_narrower_than_the_study():
    demo, study = load_config("demo").model, load_config("study").model
    assert demo.image_size < study.image_size
    assert all(d < s for d, s in zip(demo.filters, study.filters))
    assert all(d < s for d, s in zip(demo.dense_units, study.dense_units))


def test_a_yaml_file_then_set_flags_override_the_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("training:\n  epochs: 7\n  augmentation:\n    zoom: 0.0\nmodel:\n  filters: [4, 8, 8, 8]\n")
    config = load_config("demo", str(path), ["training.epochs=9", "gate.min_accuracy=0.75"])
    assert config.training.epochs == 9 and config.training.augmentation.zoom == 0.0
    assert config.model.filters == (4, 8, 8, 8) and config.gate.min_accuracy == 0.75
    assert config.training.learning_rate == PRESETS["demo"].training.learning_rate


def test_a_number_in_exponent_notation_is_a_number():
    # YAML 1.1 reads 1e-3 (no dot) as a string.
    assert load_config("demo", overrides=["training.learning_rate=1e-3"]).training.learning_rate == 0.001


@pytest.mark.parametrize("overrides, message", [
    (["training.epoch=3"], "unknown setting training.epoch"),
    (["training.epochs=many"], "training.epochs must be a number"),
    (["validation.stop_on_anomalies=maybe"], "validation.stop_on_anomalies must be true or false"),
    (["stop_on_anomalies=false"], "unknown setting stop_on_anomalies; known: .*validation"),
    (["training=3"], "training is a section"),
    (["model.image_size=40"], "too small for 4 blocks"),
    (["epochs"], "must look like section.field=value"),
])
def test_bad_overrides_name_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides=overrides)


def test_unknown_preset_and_missing_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        load_config("fast")
    with pytest.raises(ConfigError, match="cannot read configuration file .*nope.yaml"):
        load_config("demo", str(tmp_path / "nope.yaml"))


def test_local_folders_become_absolute_for_a_local_run_and_bucket_paths_stay(tmp_path, monkeypatch):
    from cxr.pipeline.config import with_absolute_paths
    monkeypatch.chdir(tmp_path)
    config = with_absolute_paths(load_config("demo", overrides=["serving_dir=gs://bucket/serving"]))
    assert config.pipeline_root == str(tmp_path / "demo" / "pipeline")
    assert config.metadata_path == str(tmp_path / "demo" / "metadata.sqlite")
    assert config.data.tfrecords_dir == str(tmp_path / "demo" / "tfrecords")
    assert config.serving_dir == "gs://bucket/serving"


@pytest.mark.parametrize("override, message", [
    ("model.kernel_initializer=zeros", "model.kernel_initializer must be one of glorot_uniform, he_normal, got 'zeros'"),
    ("training.learning_rate_schedule=step", "training.learning_rate_schedule must be one of constant, cosine"),
    ("training.precision=float16", "training.precision must be one of float32, mixed_float16, mixed_bfloat16, auto"),
    ("training.mixed_precision=true", r"training.mixed_precision was replaced by training.precision \(float32, "
                                      r"mixed_float16, mixed_bfloat16 or auto; mixed_precision: true was mixed_float16\)"),
])
def test_an_initializer_or_schedule_the_model_does_not_know_is_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides=[override])


def test_the_replaced_mixed_precision_key_is_refused_in_a_file_too(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("training:\n  mixed_precision: true\n")
    with pytest.raises(ConfigError, match="old.yaml: training.mixed_precision was replaced by training.precision"):
        load_config("demo", str(path))
    assert load_config("demo", overrides=["training.precision=mixed_bfloat16"]).training.precision == "mixed_bfloat16"
