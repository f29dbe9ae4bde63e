"""The Trainer's run_fn on two logical CPU devices, in a process of its own: logical devices
must be configured before TensorFlow starts. Prints the replica count the Trainer saw.

    python mirrored_run.py '<FnArgs fields as JSON>'
"""
import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tfx import v1 as tfx  # noqa: E402 (after the device configuration)

from cxr.components import trainer  # noqa: E402

print(json.dumps({"replicas": trainer.distribution_strategy().num_replicas_in_sync}), flush=True)
trainer.run_fn(tfx.components.FnArgs(**json.loads(sys.argv[1])))
