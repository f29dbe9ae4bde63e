"""The exported SavedModel, as TF Serving sees it: signatures, input guards, Grad-CAM, warm-up."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.python.tools import saved_model_utils
from tensorflow_serving.apis import prediction_log_pb2

from cxr import contract
import dicom_files
from helpers import encode, phantom_picture
from trained_model import IMAGE_SIZE, LIMITS, MAX_IMAGE_PIXELS, SMALL_MODEL, demo_png

CLASSES = len(contract.LABELS)


def _signature_table(model_dir):
    """{signature: {"inputs"|"outputs": {alias: (dtype, shape)}}}, read as `saved_model_cli show --all` does."""
    signature_defs = saved_model_utils.get_meta_graph_def(model_dir, "serve").signature_def
    return {name: {side: {alias: (tf.dtypes.as_dtype(info.dtype).name if info.dtype else "composite",
                                  [dim.size for dim in info.tensor_shape.dim])
                          for alias, info in getattr(signature_def, side).items()}
                   for side in ("inputs", "outputs")}
            for name, signature_def in signature_defs.items()}


def test_the_signatures_have_the_names_dtypes_and_shapes_of_the_contract(model_base_path):
    table = _signature_table(os.path.join(model_base_path, "1"))
    images = {contract.IMAGES_INPUT: ("string", [-1])}
    assert table[contract.PREDICT_SIGNATURE] == {"inputs": images, "outputs": {
        contract.PROBABILITIES: ("float32", [-1, CLASSES]), contract.CLASS_ID: ("int64", [-1]),
        contract.CLASS_NAME: ("string", [-1])}}
    explained = {contract.PROBABILITIES: ("float32", [-1, CLASSES]), contract.CLASS_ID: ("int64", [-1]), contract.CLASS_NAME: ("string", [-1]),
                 contract.PROBABILITY: ("float32", [-1]), contract.HEATMAP: ("float32", [-1, IMAGE_SIZE, IMAGE_SIZE])}
    assert table[contract.EXPLAIN_SIGNATURE] == {"inputs": images, "outputs": explained}
    assert table[contract.EXPLAIN_CLASS_SIGNATURE] == {
        "inputs": {**images, contract.CLASS_ID_INPUT: ("int64", [-1])}, "outputs": explained}
    predicted = table[contract.PREDICT_SIGNATURE]["outputs"]
    assert table[contract.EMBED_SIGNATURE] == {"inputs": images, "outputs": {
        **predicted, contract.EMBEDDING: ("float32", [-1, SMALL_MODEL.dense_units[-1]])}}
    assert {"serving_examples", "transform_features"} <= set(table)


def test_the_embedding_is_what_the_softmax_layer_turns_into_the_served_probabilities(loaded_model):
    images = tf.constant([demo_png(seed, label) for seed, label in enumerate(contract.LABELS)])
    embedded = loaded_model.signatures[contract.EMBED_SIGNATURE](images=images)
    served = loaded_model.signatures[contract.PREDICT_SIGNATURE](images=images)
    weights = {v.name.split(":")[0]: v.numpy() for v in loaded_model.variables
               if v.name.startswith(contract.PROBABILITIES + "/")}
    logits = embedded[contract.EMBEDDING].numpy() @ weights[contract.PROBABILITIES + "/kernel"] \
        + weights[contract.PROBABILITIES + "/bias"]
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True),
                               served[contract.PROBABILITIES].numpy(), atol=1e-4)
    np.testing.assert_allclose(embedded[contract.PROBABILITIES].numpy(), served[contract.PROBABILITIES].numpy(),
                               atol=1e-6)
    assert embedded[contract.EMBEDDING].numpy().min() >= 0  # the last dense layer's relu


def test_no_output_alias_claims_to_be_binary(model_base_path):
    # TF Serving writes outputs whose alias ends in _bytes as {"b64": ...}.
    table = _signature_table(os.path.join(model_base_path, "1"))
    assert [alias for signature in table.values() for alias in signature["outputs"] if alias.endswith("_bytes")] == []


def test_predictions_are_distributions_and_the_class_is_their_arg_max(loaded_model):
    images = [demo_png(seed, label) for seed, label in enumerate(contract.LABELS)]
    outputs = loaded_model.signatures[contract.PREDICT_SIGNATURE](images=tf.constant(images))
    probabilities = outputs[contract.PROBABILITIES].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert outputs[contract.CLASS_ID].numpy().tolist() == probabilities.argmax(axis=1).tolist()
    assert [name.decode() for name in outputs[contract.CLASS_NAME].numpy()] == [
        contract.LABELS[i] for i in probabilities.argmax(axis=1)]


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring width x height, followed by no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return contract.PNG_SIGNATURE + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + b"\0\0\0\0"


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    data = bytearray(encode(phantom_picture(3, size=32), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _truncated_png() -> bytes:
    data = demo_png(4)
    return data[:len(data) // 2]


@pytest.mark.parametrize("payload, message", [
    (lambda: b"this is not an image", "not a PNG or JPEG"),
    (lambda: b"GIF89a" + bytes(40), "not a PNG or JPEG"),
    (lambda: contract.PNG_SIGNATURE + b"\0\0", "not a PNG or JPEG"),
    (_truncated_png, "PNG"),
    (lambda: _png_declaring(20_000, 20_000), "declares more than"),
    (lambda: _jpeg_declaring(2_000, 1_000), "declares more than"),
    (lambda: encode(Image.new("L", (1_100, 1_000), 90), "PNG"), "declares more than"),
    (lambda: dicom_files.dicom_file(seed=2), "a DICOM file reached the model.*cxr convert-dicom"),
])
def test_a_bad_payload_fails_with_invalid_argument_naming_the_problem(loaded_model, payload, message):
    good = demo_png(1)
    for signature in (contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message) as raised:
            loaded_model.signatures[signature](images=tf.constant([good, payload()]))
        if "PNG or JPEG" in message or "declares" in message or "DICOM" in message:
            assert "[1]" in raised.value.message, "the message names the image's index in the batch"


def test_the_pixel_cap_reads_the_header_and_never_decodes_the_bomb(loaded_model):
    # A header declaring 400 M pixels with no data: decoding would fail differently ("Invalid PNG data").
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"more than {MAX_IMAGE_PIXELS} pixels"):
        loaded_model.signatures[contract.PREDICT_SIGNATURE](images=tf.constant([_png_declaring(20_000, 20_000)]))
    just_under = encode(Image.new("L", (1_000, 1_000), 90), "PNG")  # exactly the cap: accepted
    outputs = loaded_model.signatures[contract.PREDICT_SIGNATURE](images=tf.constant([just_under]))
    assert outputs[contract.PROBABILITIES].shape == (1, CLASSES)


def _sixteen_bit_rgba_png(side: int) -> bytes:
    """side x side, 16 bits per sample, four channels: few pixels, many decoded bytes (8 per pixel)."""
    rows = b"".join(b"\0" + bytes(side * 8) for _ in range(side))
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")]
    return contract.PNG_SIGNATURE + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks)


def test_the_decoded_bytes_cap_reads_bit_depth_and_channels_from_the_header(loaded_model):
    serve = loaded_model.signatures[contract.PREDICT_SIGNATURE]
    rgba16 = _sixteen_bit_rgba_png(400)  # 160,000 pixels, far under the pixel cap; 1,280,000 decoded bytes
    assert Image.open(io.BytesIO(rgba16)).size == (400, 400)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=f"more than {LIMITS.max_image_bytes} decoded bytes.*index.*0.*1280000"):
        serve(images=tf.constant([rgba16]))
    assert serve(images=tf.constant([_sixteen_bit_rgba_png(350)]))[contract.CLASS_ID].shape == (1,)  # 980,000


def test_a_request_whose_images_together_declare_too_many_bytes_is_refused(loaded_model):
    at_the_cap = encode(Image.new("L", (1_000, 1_000), 90), "PNG")  # 1,000,000 decoded bytes each
    serve = loaded_model.signatures[contract.PREDICT_SIGNATURE]
    assert serve(images=tf.constant([at_the_cap] * 4))[contract.CLASS_ID].shape == (4,)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"more than {LIMITS.max_request_bytes} decoded bytes "
                                                             "together"):
        serve(images=tf.constant([at_the_cap] * 5))


def _example(image: bytes) -> bytes:
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
               "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"NORMAL"]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_every_signature_refuses_a_bomb_before_decoding_it(loaded_model):
    """Loops over what the SavedModel exports, so that a signature added later cannot skip the guards."""
    bomb = _png_declaring(20_000, 20_000)
    arguments = {contract.IMAGES_INPUT: tf.constant([bomb]), "examples": tf.constant([_example(bomb)]),
                 contract.CLASS_ID_INPUT: tf.constant([0], tf.int64)}
    assert len(loaded_model.signatures) == 6
    for name, function in loaded_model.signatures.items():
        inputs = function.structured_input_signature[1]
        assert {contract.IMAGES_INPUT, "examples"} & set(inputs), f"{name} takes neither images nor tf.Examples"
        with pytest.raises(tf.errors.InvalidArgumentError, match="declares more than"):
            function(**{key: arguments[key] for key in inputs})
        good = {**arguments, contract.IMAGES_INPUT: tf.constant([demo_png(2)]),
                "examples": tf.constant([_example(demo_png(2))])}
        assert function(**{key: good[key] for key in inputs}), name


def test_explain_gives_the_predicted_class_its_probability_and_a_unit_scaled_heatmap(loaded_model):
    images = tf.constant([demo_png(seed, label) for seed, label in enumerate(contract.LABELS)])
    predicted = loaded_model.signatures[contract.PREDICT_SIGNATURE](images=images)
    explained = loaded_model.signatures[contract.EXPLAIN_SIGNATURE](images=images)
    class_id = predicted[contract.CLASS_ID].numpy()
    assert explained[contract.CLASS_ID].numpy().tolist() == class_id.tolist()
    np.testing.assert_allclose(explained[contract.PROBABILITIES].numpy(),
                               predicted[contract.PROBABILITIES].numpy(), atol=1e-5)
    np.testing.assert_allclose(explained[contract.PROBABILITY].numpy(),
                               predicted[contract.PROBABILITIES].numpy()[np.arange(len(class_id)), class_id],
                               atol=1e-5)
    heatmap = explained[contract.HEATMAP].numpy()
    assert heatmap.shape == (len(class_id), IMAGE_SIZE, IMAGE_SIZE)
    assert heatmap.min() >= 0.0 and np.allclose(heatmap.max(axis=(1, 2)), 1.0)


def test_explain_class_explains_the_class_asked_for_and_refuses_unknown_ones(loaded_model):
    images = tf.constant([demo_png(7), demo_png(8)])
    explained = loaded_model.signatures[contract.EXPLAIN_CLASS_SIGNATURE](
        images=images, class_id=tf.constant([3, 0], tf.int64))
    assert explained[contract.CLASS_ID].numpy().tolist() == [3, 0]
    assert [name.decode() for name in explained[contract.CLASS_NAME].numpy()] == [
        contract.LABELS[3], contract.LABELS[0]]
    with pytest.raises(tf.errors.InvalidArgumentError, match="class_id must be 0..3"):
        loaded_model.signatures[contract.EXPLAIN_CLASS_SIGNATURE](images=images, class_id=tf.constant([1, 4], tf.int64))


def _share_on_the_left(heatmaps: np.ndarray) -> np.ndarray:
    half = heatmaps.shape[2] // 2
    return heatmaps[:, :, :half].sum(axis=(1, 2)) / heatmaps.sum(axis=(1, 2))


def test_grad_cam_puts_most_of_its_mass_on_the_side_of_a_one_sided_consolidation(loaded_model):
    bacterial = contract.LABELS.index("BACTERIAL_PNEUMONIA")
    for lung, side in ((0, "left"), (1, "right")):
        images = tf.constant([demo_png(70_000 + seed, "BACTERIAL_PNEUMONIA", affected_lung=lung) for seed in range(8)])
        heatmaps = loaded_model.signatures[contract.EXPLAIN_CLASS_SIGNATURE](
            images=images, class_id=tf.constant([bacterial] * 8, tf.int64))[contract.HEATMAP].numpy()
        share = _share_on_the_left(heatmaps) if side == "left" else 1 - _share_on_the_left(heatmaps)
        assert share.mean() > 0.6 and (share > 0.5).sum() >= 6, (side, share.round(2))


def test_the_warmup_file_holds_one_valid_request_per_image_signature(loaded_model, model_base_path):
    path = os.path.join(model_base_path, "1", contract.WARMUP_FILE)
    logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in tf.data.TFRecordDataset(path)]
    signatures = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert signatures == [contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE]
    for log in logs:
        request = log.predict_log.request
        images = tf.make_ndarray(request.inputs[contract.IMAGES_INPUT])
        assert Image.open(io.BytesIO(images[0])).format == "PNG"
        outputs = loaded_model.signatures[request.model_spec.signature_name](images=tf.constant(images))
        assert outputs[contract.CLASS_ID].shape == (1,)


def test_more_images_than_the_limit_are_refused_before_any_is_decoded(loaded_model):
    # 65 tiny PNGs: a few kilobytes that, decoded and resized, once took gigabytes.
    tiny = encode(Image.new("L", (1, 1), 90), "PNG")
    for signature in (contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE, contract.EMBED_SIGNATURE):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=f"more than {LIMITS.max_images_per_request} images \\(limit max_images_per_request\\)"):
            loaded_model.signatures[signature](images=tf.constant([tiny] * (LIMITS.max_images_per_request + 1)))
    # The next request is answered as ever.
    outputs = loaded_model.signatures[contract.PREDICT_SIGNATURE](images=tf.constant([demo_png(1)]))
    assert outputs[contract.PROBABILITIES].shape == (1, CLASSES)


def test_a_legal_batch_runs_in_chunks_and_answers_as_one_image_at_a_time(loaded_model):
    images = [demo_png(seed) for seed in range(LIMITS.chunk_images * 2 + 3)]  # three chunks, the last short
    for signature in (contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE, contract.EMBED_SIGNATURE):
        together = loaded_model.signatures[signature](images=tf.constant(images))
        alone = [loaded_model.signatures[signature](images=tf.constant([image])) for image in images]
        for name, value in together.items():
            assert value.shape[0] == len(images)
            expected = np.concatenate([one[name].numpy() for one in alone])
            if value.dtype == tf.string or value.dtype.is_integer:
                assert (value.numpy() == expected).all(), name
            else:
                assert np.allclose(value.numpy(), expected, atol=1e-5), name
    class_ids = tf.constant([i % CLASSES for i in range(len(images))], tf.int64)
    explained = loaded_model.signatures[contract.EXPLAIN_CLASS_SIGNATURE](images=tf.constant(images), class_id=class_ids)
    assert (explained[contract.CLASS_ID].numpy() == class_ids.numpy()).all()
