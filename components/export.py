"""The SavedModel that TF Serving serves: signatures, in-graph input guards, Grad-CAM and warm-up.

Signatures (names from cxr/contract.py):
- serving_default: `images` [-1] tf.string of encoded PNG/JPEG -> probabilities [N, 4],
  class_id [N], class_name [N] (TF Serving's {"b64": ...} JSON maps onto `images`);
- explain: `images` -> probabilities, class_id, class_name, probability (of the
  explained class) and a Grad-CAM heatmap [N, size, size] in [0, 1] of the
  predicted class: one request gives both the answer and its explanation;
- explain_class: `images` and `class_id` [-1] -> the same for the class asked for;
- serving_examples: serialized tf.Example -> the serving_default outputs;
- transform_features: serialized tf.Example -> Transform's output (for TFMA).
Every signature that takes image bytes or tf.Examples checks the images before
decoding them (InputLimits): a payload that is not a PNG or JPEG, whose header
declares more pixels than `max_image_pixels` (a decompression bomb) or more decoded
bytes than `max_image_bytes`, or a request whose images together declare more than
`max_request_bytes`, or more images than `max_images_per_request` (`max_examples_per_request` for
the tf.Example signatures), fails with InvalidArgument naming the problem and the image's
index; a DICOM file is named as one, to be sent through the serving front or converted first
(cxr/dicom/convert.py). Transform's graph then decodes the images one at a time, and the
image signatures run `chunk_images` at a time through decoding and the CNN (`chunked`), so a legal
request's memory does not grow with its count.
"""
import os
from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from cxr import contract
from cxr.components.model import LAST_CONV_NAME
from cxr.components.settings import InputLimits
from cxr.components.transform import decode_pixels
from cxr.contract import IMAGE, LABEL, LABELS

# Signature (8) + IHDR length and type (8) + width and height (8) + bit depth (1) + color type (1).
_PNG_HEADER_BYTES = 26
# Channels TensorFlow decodes a PNG of each IHDR color type into: gray, -, RGB, palette (RGB, or
# RGBA with a tRNS chunk: counted as 4), gray + alpha, -, RGBA.
_PNG_CHANNELS = (1, 0, 3, 4, 2, 0, 4)


def export_serving_model(model: keras.Model, transform_output: tft.TFTransformOutput, export_dir: str,
                         limits: InputLimits) -> None:
    model.save(export_dir, save_format="tf", signatures=serving_signatures(model, transform_output, limits))
    write_warmup_requests(export_dir, image_size=model.input_shape[1])


def serving_signatures(model: keras.Model, transform_output: tft.TFTransformOutput, limits: InputLimits) -> dict:
    # Attached to the model so that model.save tracks their variables and assets.
    model.tft_layer = transform_output.transform_features_layer()
    model.grad_cam_model = _grad_cam_model(model)
    raw_spec = transform_output.raw_feature_spec()
    class_names = tf.constant(LABELS)
    image_size = model.input_shape[1]

    def pixels_of(images):
        return decode_pixels(model.tft_layer({IMAGE: tf.reshape(images, [-1, 1])})[IMAGE], image_size)

    def in_chunks(compute, images, most, *more):
        """compute(images, *more) on `limits.chunk_images` images at a time, once all are checked."""
        return chunked(compute, limits.chunk_images, checked_images(images, limits, *most), *more)

    def predict(pixels):
        probabilities = model(pixels, training=False)
        class_id = tf.argmax(probabilities, axis=-1)
        return {contract.PROBABILITIES: probabilities, contract.CLASS_ID: class_id,
                contract.CLASS_NAME: tf.gather(class_names, class_id)}

    def explain_pixels(pixels, class_id=None):
        probabilities, class_id, heatmap = grad_cam(model.grad_cam_model, model.get_layer(contract.PROBABILITIES),
                                                    pixels, class_id)
        return {contract.PROBABILITIES: probabilities, contract.CLASS_ID: class_id,
                contract.CLASS_NAME: tf.gather(class_names, class_id),
                contract.PROBABILITY: tf.gather(probabilities, class_id, batch_dims=1), contract.HEATMAP: heatmap}

    images_spec = tf.TensorSpec([None], tf.string, name=contract.IMAGES_INPUT)
    examples_spec = tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT)

    def embedded(images):
        pixels = pixels_of(images)
        hidden = tf.cast(model.grad_cam_model(pixels, training=False)[1], tf.float32)
        return {contract.EMBEDDING: hidden, **predict(pixels)}

    images_most = (limits.max_images_per_request, "max_images_per_request")
    examples_most = (limits.max_examples_per_request, "max_examples_per_request")

    @tf.function(input_signature=[images_spec])
    def serve_images(images):
        return in_chunks(lambda some: predict(pixels_of(some)), images, images_most)

    @tf.function(input_signature=[images_spec])
    def explain(images):
        return in_chunks(lambda some: explain_pixels(pixels_of(some)), images, images_most)

    @tf.function(input_signature=[images_spec])
    def embed(images):
        return in_chunks(embedded, images, images_most)

    @tf.function(input_signature=[images_spec, tf.TensorSpec([None], tf.int64, name=contract.CLASS_ID_INPUT)])
    def explain_class(images, class_id):
        known = tf.logical_and(class_id >= 0, class_id < contract.NUM_CLASSES)
        check = tf.debugging.Assert(tf.reduce_all(known), [
            f"class_id must be 0..{contract.NUM_CLASSES - 1}, got", tf.boolean_mask(class_id, tf.logical_not(known))])
        with tf.control_dependencies([check]):
            return in_chunks(lambda some, ids: explain_pixels(pixels_of(some), ids), images, images_most,
                             tf.identity(class_id))

    @tf.function(input_signature=[examples_spec])
    def serve_examples(examples):
        with tf.control_dependencies([_at_most_count(examples, *examples_most, "examples")]):
            images = tf.io.parse_example(examples, {IMAGE: raw_spec[IMAGE]})[IMAGE]
        return in_chunks(lambda some: predict(pixels_of(some)), tf.reshape(images, [-1]), examples_most)

    @tf.function(input_signature=[examples_spec])
    def transform_features(examples):
        # TFMA's preprocessing: Transform's graph decodes one image at a time and keeps 8-bit pixels.
        with tf.control_dependencies([_at_most_count(examples, *examples_most, "examples")]):
            raw = tf.io.parse_example(examples, {IMAGE: raw_spec[IMAGE], LABEL: raw_spec[LABEL]})
        checked = checked_images(tf.reshape(raw[IMAGE], [-1]), limits, *examples_most)
        return model.tft_layer({**raw, IMAGE: tf.reshape(checked, [-1, 1])})

    return {contract.PREDICT_SIGNATURE: serve_images.get_concrete_function(),
            contract.EXPLAIN_SIGNATURE: explain.get_concrete_function(),
            contract.EXPLAIN_CLASS_SIGNATURE: explain_class.get_concrete_function(),
            contract.EMBED_SIGNATURE: embed.get_concrete_function(),
            contract.EXAMPLES_SIGNATURE: serve_examples.get_concrete_function(),
            contract.TRANSFORM_SIGNATURE: transform_features.get_concrete_function()}


def chunked(compute, chunk: int, images: tf.Tensor, *more: tf.Tensor) -> dict:
    """compute(images[i:i + chunk], *more[i:i + chunk]) for each chunk in turn, the outputs joined: a legal
    request's memory is one chunk's, however many images it holds (one chunk when it holds few)."""
    count = tf.shape(images)[0]
    first = compute(images[:chunk], *(tensor[:chunk] for tensor in more))
    arrays = {name: tf.TensorArray(value.dtype, size=1, dynamic_size=True, infer_shape=False,
                                   element_shape=tf.TensorShape([None]).concatenate(value.shape[1:])).write(0, value)
              for name, value in first.items()}

    def step(index, arrays):
        start = index * chunk
        outputs = compute(images[start:start + chunk], *(tensor[start:start + chunk] for tensor in more))
        return index + 1, {name: arrays[name].write(index, outputs[name]) for name in arrays}

    _, arrays = tf.while_loop(lambda index, _: index * chunk < count, step, (tf.constant(1), arrays),
                              parallel_iterations=1)
    return {name: array.concat() for name, array in arrays.items()}


def _at_most_count(values: tf.Tensor, most: int, limit: str, what: str):
    return tf.debugging.Assert(tf.size(values) <= most, [
        f"the request holds more than {most} {what} (limit {limit}): send fewer per request; it holds",
        tf.size(values)])


def checked_images(images: tf.Tensor, limits: InputLimits, max_count: Optional[int] = None,
                   limit: str = "max_images_per_request") -> tf.Tensor:
    """`images` unchanged once they are at most `max_count` and every one is a PNG or JPEG whose header
    keeps within the limits. The count first: it is what every other check's cost grows with."""
    max_count = limits.max_images_per_request if max_count is None else max_count
    with tf.control_dependencies([_at_most_count(images, max_count, limit, "images")]):
        images = tf.identity(images)
    is_png = tf.logical_and(tf.strings.substr(images, 0, 8) == contract.PNG_SIGNATURE,
                            tf.strings.length(images) >= _PNG_HEADER_BYTES)
    is_jpeg = tf.strings.substr(images, 0, 3) == contract.JPEG_SIGNATURE
    # substr past a string's end fails, so the first 132 bytes (or fewer) are matched instead.
    heads = tf.strings.substr(images, 0, contract.DICOM_PREAMBLE_BYTES + len(contract.DICOM_PREFIX))
    is_dicom = tf.strings.regex_full_match(
        heads, f"(?s).{{{contract.DICOM_PREAMBLE_BYTES}}}{contract.DICOM_PREFIX.decode('ascii')}")
    no_dicom = tf.debugging.Assert(tf.logical_not(tf.reduce_any(is_dicom)), [
        "a DICOM file reached the model, which takes PNG or JPEG: send DICOM through the serving front "
        "(cxr log-proxy, cxr serve) or convert it first (cxr convert-dicom); images at index",
        tf.where(is_dicom)[:, 0]])
    known = tf.logical_or(is_png, is_jpeg)
    with tf.control_dependencies([no_dicom]):
        formats_ok = tf.debugging.Assert(tf.reduce_all(known), [
            "not a PNG or JPEG file: images at index", tf.where(tf.logical_not(known))[:, 0]])
    with tf.control_dependencies([formats_ok]):
        declared = tf.map_fn(declared_size, images, fn_output_signature=tf.TensorSpec([2], tf.int64))
    pixels, decoded_bytes = declared[:, 0], declared[:, 1]
    checks = [
        _at_most(pixels, limits.max_image_pixels, "image header declares more than {} pixels "
                                                  "(limit max_image_pixels): images at index", "declared pixels"),
        _at_most(decoded_bytes, limits.max_image_bytes, "image header declares more than {} decoded bytes "
                                                        "(limit max_image_bytes): images at index", "declared bytes"),
        tf.debugging.Assert(tf.reduce_sum(decoded_bytes) <= limits.max_request_bytes, [
            f"the request's images declare more than {limits.max_request_bytes} decoded bytes together "
            f"(limit max_request_bytes): send fewer per request; declared", tf.reduce_sum(decoded_bytes)]),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(images)


def _at_most(values: tf.Tensor, limit: int, message: str, what: str):
    over = values > limit
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(over)), [
        message.format(limit), tf.where(over)[:, 0], what, tf.boolean_mask(values, over)])


def declared_size(image: tf.Tensor) -> tf.Tensor:
    """[pixels, decoded bytes] as the file's header declares them, read without decoding:
    width x height, and width x height x channels x bytes per sample."""
    def png():
        header = tf.cast(tf.io.decode_raw(tf.strings.substr(image, 16, 10), tf.uint8), tf.int64)
        place = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64)
        width, height = tf.reduce_sum(header[0:4] * place), tf.reduce_sum(header[4:8] * place)  # big-endian
        bit_depth, color_type = header[8], tf.minimum(header[9], len(_PNG_CHANNELS) - 1)
        channels = tf.gather(tf.constant(_PNG_CHANNELS, tf.int64), color_type)
        bytes_per_sample = tf.where(bit_depth > 8, tf.constant(2, tf.int64), tf.constant(1, tf.int64))
        return tf.stack([width * height, width * height * tf.maximum(channels, 1) * bytes_per_sample])

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(image), tf.int64)  # height, width, channels; 8-bit samples
        return tf.stack([shape[0] * shape[1], shape[0] * shape[1] * shape[2]])

    return tf.cond(tf.strings.substr(image, 0, 8) == contract.PNG_SIGNATURE, png, jpeg)


def _grad_cam_model(model: keras.Model) -> keras.Model:
    """The model cut open: last convolution's feature maps and the input of the softmax layer."""
    return keras.Model(model.inputs, [model.get_layer(LAST_CONV_NAME).output,
                                      model.get_layer(contract.PROBABILITIES).input], name="grad_cam")


def grad_cam(grad_cam_model: keras.Model, output_layer: keras.layers.Dense, pixels: tf.Tensor, class_id=None):
    """(probabilities [N, 4], the explained class_id, heatmap [N, size, size] in [0, 1]) per image.

    The gradient is taken of the class's logit, not its probability: a confident
    softmax saturates and its gradients vanish.
    """
    with tf.GradientTape() as tape:
        feature_maps, hidden = grad_cam_model(pixels, training=False)
        logits = tf.matmul(tf.cast(hidden, tf.float32), output_layer.kernel) + output_layer.bias  # float32 layer
        probabilities = tf.nn.softmax(logits)
        if class_id is None:
            class_id = tf.argmax(probabilities, axis=-1)
        chosen_logits = tf.gather(logits, class_id, batch_dims=1)
    gradients = tf.cast(tape.gradient(chosen_logits, feature_maps), tf.float32)
    channel_weights = tf.reduce_mean(gradients, axis=[1, 2])
    cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", tf.cast(feature_maps, tf.float32), channel_weights))
    size = tf.shape(pixels)[1:3]
    heatmap = tf.image.resize(cam[..., tf.newaxis], size, method="bilinear")[..., 0]
    heatmap = tf.math.divide_no_nan(heatmap, tf.reduce_max(heatmap, axis=[1, 2], keepdims=True))
    return probabilities, class_id, heatmap


def write_warmup_requests(export_dir: str, image_size: int) -> str:
    """One request per image signature, so TF Serving runs each graph once before it reports AVAILABLE."""
    path = os.path.join(export_dir, contract.WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    image = warmup_image(image_size)
    with tf.io.TFRecordWriter(path) as writer:
        for signature in (contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE):
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=signature))
            request.inputs[contract.IMAGES_INPUT].CopyFrom(tf.make_tensor_proto([image], tf.string))
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    return path


def warmup_image(size: int) -> bytes:
    """A synthetic gradient PNG: warm-up must not ship a patient's X-ray inside the model."""
    ramp = tf.linspace(0.0, 255.0, size)
    pixels = tf.cast(tf.minimum(ramp[:, tf.newaxis] + ramp[tf.newaxis, :], 255.0), tf.uint8)
    return tf.io.encode_png(pixels[..., tf.newaxis]).numpy()
