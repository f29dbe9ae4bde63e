"""The monitor's thresholds: the `monitoring` section of the pipeline's configuration.

Each check records its raw distance whatever the threshold; the thresholds only say when a
distance is an alarm. Their defaults were calibrated on windows of training data, where nothing
drifts (bench/monitor.py, README "Monitoring"): there every alarm is a false one.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class MonitoringSettings:
    # A window with fewer logged images is reported as too small to judge: its distances are
    # recorded, no alarm is raised.
    min_window_images: int = 30
    # The training images each version's reference describes: a uniform sample of the split when it is
    # larger (each image costs a decode and a pass of the model; the distributions need no more).
    max_training_images: int = 2000
    # The logged images each window of each version is judged on: all of them up to this, past it a uniform
    # sample of this many, drawn as the log streams by (memory holds at most this many images a window,
    # whatever the traffic; the window's count of logged images stays exact).
    max_window_images: int = 1000
    # TFDV's comparators: L-infinity distance for categorical features (format, the predicted class),
    # Jensen-Shannon divergence for numeric ones (size, depth, pixel statistics, top probability,
    # entropy); skew compares a window with the training split, drift with the window before, and two
    # small windows differ more by chance than a window and the whole split. Calibrated on windows of
    # 30 of the demo's training split (bench/RESULTS.md, "Monitoring"): above the largest distance
    # seen where nothing shifted (skew 0.52 numeric and 0.28 categorical, drift 0.75 and 0.40).
    skew_categorical_threshold: float = 0.35
    skew_numeric_threshold: float = 0.6
    drift_categorical_threshold: float = 0.5
    drift_numeric_threshold: float = 0.8
    # The same comparators on the model's answers (predicted class; top probability, entropy) against its
    # answers on the test split, which the ServingCheck recorded: a smaller reference than the training
    # split. Calibrated the same way: the largest distances seen were 0.27 and 0.43.
    answers_categorical_threshold: float = 0.35
    answers_numeric_threshold: float = 0.6
    # The embeddings (the softmax layer's input, reduced to embedding_components principal components
    # fitted on the training split): a maximum mean discrepancy between window and training whose
    # permutation p-value (mmd_permutations permutations) is below mmd_p_value is an alarm.
    embedding_components: int = 5
    mmd_p_value: float = 0.01
    mmd_permutations: int = 200
    mmd_max_reference: int = 300  # training images the test draws from (its cost grows with the square)
    # Queued for labelling: images whose top probability is below this, or whose embedding lies
    # farther from the training split's than all but outlier_quantile of training images do.
    uncertain_below: float = 0.5
    outlier_quantile: float = 0.99
    outliers_shown: int = 8  # per window, on the page, with their Grad-CAM
    # What cxr monitor reads by default, and each scheduled monitoring run on Kubeflow (cxr kfp compile
    # --job monitoring): the log proxies' --request_log_root (a folder every task mounts through
    # kubeflow.volumes, or gs://), the span each run judges (ending at its scheduled time, or when it
    # starts) and the windows it cuts that span into. The proxies' retention must keep lookback_s.
    logs_root: str = ""
    lookback_s: float = 86400.0
    window_s: float = 3600.0
    # Patient images the monitor writes (the queue to label, the page's outliers): their retention, enforced
    # by every monitoring run over its output folder (the Kubeflow job: over every earlier run's folder too).
    retention_days: float = 30.0
    # Whether the page shown in KFP's UI (copied to KFP's artifact store, which more people read than the
    # pipeline root) embeds the outlying served images; the page in the monitoring folder always does.
    kfp_page_images: bool = False

    def __post_init__(self):
        for name in ("lookback_s", "window_s", "min_window_images", "max_window_images", "max_training_images",
                     "mmd_permutations",
                     "embedding_components", "retention_days"):
            if getattr(self, name) <= 0:
                raise ValueError(f"monitoring.{name} must be positive, got {getattr(self, name)}")
        if self.window_s > self.lookback_s:
            raise ValueError(f"monitoring.window_s ({self.window_s:g}) must not exceed monitoring.lookback_s "
                             f"({self.lookback_s:g})")
