"""`cxr build-tfrecords`: the Beam pipeline from dataset folders to one TFRecord span.

Image bytes never cross a shuffle: the first pass reads each file to probe it
and passes on only its description; once duplicates are known, the writer reads
the kept files again. A shuffle on Beam's DirectRunner is held in memory, so
this keeps memory flat however many images there are.
"""
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Dict, Iterator, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from cxr.components.ingest import layouts, nih, records
from cxr.components.ingest.config import IngestConfig
from cxr.components.ingest.dedup import Candidate, FindDuplicates
from cxr.components.ingest.ledger import (
    QUARANTINED, UNMAPPED, WRITTEN, Ignored, LedgerCombineFn, MissingNihFile, Outcome, reconciliation)
from cxr.components.ingest.mapping import ClassMapping
from cxr.components.ingest.probe import ImageFacts, probe
from cxr.components.vocabulary import NIH, SOURCES

SHARD_PREFIX = "data"
SHARD_SUFFIX = ".tfrecord.gz"
MANIFEST = "manifest.json"
_METRICS = "cxr_ingest"
_OUTCOMES = "outcomes"
_IGNORED = "ignored"
_MISSING = "missing"


class IngestError(RuntimeError):
    """The run cannot start or did not account for every file."""


def build_tfrecords(config: IngestConfig) -> dict:
    """Runs the pipeline and returns the manifest it wrote beside the shards."""
    _check_roots(config)
    staging = _prepare_output(config)
    nih_csv = nih.find_csv(config.root(NIH)) if config.root(NIH) else None
    header = _manifest_header(config, nih_csv)
    with beam.Pipeline(options=PipelineOptions(list(config.pipeline_args()))) as pipeline:
        _ingest(pipeline, config, nih_csv, staging, header)
    _publish(staging, config.span_dir)
    manifest = read_manifest(config.span_dir)
    if not manifest["reconciliation"]["balanced"]:
        raise IngestError(f"{config.span_dir}/{MANIFEST}: the outcomes do not add up to the files "
                          f"seen: {manifest['reconciliation']}")
    return manifest


def read_manifest(span_dir: str) -> dict:
    with FileSystems.open(f"{span_dir}/{MANIFEST}") as f:
        return json.loads(f.read().decode("utf-8"))


def _ingest(pipeline, config: IngestConfig, nih_csv, staging: str, header: dict) -> None:
    discovered = [_discover(pipeline, config, source, nih_csv)
                  for source in SOURCES if config.root(source)]
    seen = [d.seen for d in discovered] | "AllSeenFiles" >> beam.Flatten()
    seen_count = seen | "CountSeen" >> beam.combiners.Count.Globally()
    probed = (
        seen
        # Spreads the files over the workers (discovery yields them from one element).
        | "SpreadOverWorkers" >> beam.Reshuffle()
        | "ProbeImages" >> beam.ParDo(ProbeFile(config.mapping, config.max_pixels)).with_outputs(
            _OUTCOMES, main="candidates"))
    removed = probed.candidates | "FindDuplicates" >> FindDuplicates(config.near_duplicate_max_distance)
    written = probed.candidates | "BuildExamples" >> beam.ParDo(
        BuildExample(), removed=beam.pvalue.AsDict(removed | "KeyRemoved" >> beam.Map(lambda o: (o.file, o)))
    ).with_outputs(_OUTCOMES, main="examples")
    _ = written.examples | "WriteShards" >> beam.io.WriteToTFRecord(
        f"{staging}/{SHARD_PREFIX}", file_name_suffix=SHARD_SUFFIX, compression_type=CompressionTypes.GZIP)
    ledger_entries = [probed[_OUTCOMES], removed, written[_OUTCOMES]]
    ledger_entries += [d.ignored for d in discovered] + [d.missing for d in discovered if d.missing is not None]
    _ = (ledger_entries
         | "AllLedgerEntries" >> beam.Flatten()
         | "Summarise" >> beam.CombineGlobally(LedgerCombineFn())
         | "WriteManifest" >> beam.Map(_write_manifest, files_seen=beam.pvalue.AsSingleton(seen_count),
                                       header=header, path=f"{staging}/{MANIFEST}"))


class _Discovered(NamedTuple):
    seen: beam.PCollection
    ignored: beam.PCollection
    missing: Optional[beam.PCollection] = None  # NIH rows whose file is absent


def _discover(pipeline, config: IngestConfig, source: str, nih_csv) -> _Discovered:
    root = config.root(source).rstrip("/")
    listed = (pipeline
              | f"List[{source}]" >> fileio.MatchFiles(f"{root}/**")
              | f"Classify[{source}]" >> beam.ParDo(ClassifyFile(source, root)).with_outputs(
                  _IGNORED, main="files"))
    if source != NIH:
        return _Discovered(listed.files, listed[_IGNORED])
    rows = (pipeline
            | "NihLabelFile" >> beam.Create([nih_csv])
            | "ReadNihRows" >> beam.FlatMap(nih.read_rows)
            | "KeyNihRows" >> beam.Map(lambda row: (row.image_index, row)))
    files = listed.files | "KeyNihFiles" >> beam.Map(lambda f: (os.path.basename(f.path), f))
    joined = ({"file": files, "row": rows}
              | "JoinNihRowsAndFiles" >> beam.CoGroupByKey()
              | "LabelNihFiles" >> beam.FlatMap(_label_nih_files, csv_name=os.path.basename(nih_csv))
              .with_outputs(_MISSING, main="seen"))
    return _Discovered(joined.seen, listed[_IGNORED], joined[_MISSING])


class ClassifyFile(beam.DoFn):
    """Listed file -> a dataset image (SeenFile) or an ignored non-image file."""

    def __init__(self, source: str, root: str):
        self._source, self._root = source, root

    def process(self, metadata) -> Iterator:
        relpath = layouts.relative_path(self._root, metadata.path)
        reason = layouts.ignore_reason(relpath)
        if reason is None and self._source == NIH and not layouts.is_nih_image_path(relpath):
            reason = "outside images_NNN/images/"
        if reason is not None:
            yield beam.pvalue.TaggedOutput(_IGNORED, Ignored(self._source, reason))
        else:
            yield layouts.folder_labelled_file(self._source, metadata.path, relpath, metadata.size_in_bytes)


def _label_nih_files(keyed, csv_name: str) -> Iterator:
    image_index, grouped = keyed
    rows, files = list(grouped["row"]), list(grouped["file"])
    if not files:
        yield beam.pvalue.TaggedOutput(_MISSING, MissingNihFile(image_index))
    for found in files:
        if not rows:
            yield found._replace(problem=f"not listed in {csv_name}", raw_class="")
            continue
        row = rows[0]
        yield found._replace(raw_class=row.finding_labels, patient_id=row.patient_id)


class ProbeFile(beam.DoFn):
    """Seen file -> Candidate (labelled, readable) or the outcome that ends it here."""
    PROGRESS_EVERY_S = 5.0

    def __init__(self, mapping: ClassMapping, max_pixels: int):
        self._mapping, self._max_pixels = mapping, max_pixels

    def setup(self):
        self._done, self._last_report = 0, time.monotonic()
        self._counters = {status: Metrics.counter(_METRICS, status) for status in (QUARANTINED, UNMAPPED)}
        self._probed = Metrics.counter(_METRICS, "probed")

    def process(self, seen: layouts.SeenFile) -> Iterator:
        result = self._classify(seen)
        self._report_progress()
        if isinstance(result, Outcome):
            self._counters[result.status].inc()
            yield beam.pvalue.TaggedOutput(_OUTCOMES, result)
        else:
            self._probed.inc()
            yield result

    def _classify(self, seen: layouts.SeenFile):
        if seen.problem:
            return _ended(seen, QUARANTINED, reason=seen.problem)
        label = self._mapping.label_for(seen.source, seen.raw_class)
        if label is None:
            return _ended(seen, UNMAPPED)
        try:
            data = _read(seen.path)
        except OSError as error:
            return _ended(seen, QUARANTINED, label=label, reason=f"cannot read file: {error}")
        facts = probe(data, self._max_pixels)
        if not isinstance(facts, ImageFacts):
            return _ended(seen, QUARANTINED, label=label, reason=facts)
        return Candidate(seen=seen, label=label, facts=facts)

    def _report_progress(self):
        self._done += 1
        now = time.monotonic()
        if now - self._last_report >= self.PROGRESS_EVERY_S:
            print(f"build-tfrecords: worker {os.getpid()} has looked at {self._done:,} files",
                  file=sys.stderr, flush=True)
            self._last_report = now


class BuildExample(beam.DoFn):
    """Kept candidate -> serialized tf.Example (bytes read again) and a 'written' outcome."""

    def setup(self):
        self._written = Metrics.counter(_METRICS, WRITTEN)

    def process(self, candidate: Candidate, removed: Dict[str, Outcome]) -> Iterator:
        if candidate.key in removed:
            return
        seen = candidate.seen
        try:
            data = _read(seen.path)
        except OSError as error:
            yield beam.pvalue.TaggedOutput(_OUTCOMES, _ended(seen, QUARANTINED, label=candidate.label,
                                                             reason=f"cannot read file: {error}"))
            return
        if hashlib.sha256(data).hexdigest() != candidate.facts.sha256:
            yield beam.pvalue.TaggedOutput(_OUTCOMES, _ended(
                seen, QUARANTINED, label=candidate.label, reason="file changed during ingestion"))
            return
        self._written.inc()
        yield records.to_example(candidate, data).SerializeToString()
        yield beam.pvalue.TaggedOutput(_OUTCOMES, Outcome(
            status=WRITTEN, source=seen.source, relpath=seen.relpath, raw_class=seen.raw_class,
            label=candidate.label))


def _ended(seen: layouts.SeenFile, status: str, label=None, reason=None) -> Outcome:
    return Outcome(status=status, source=seen.source, relpath=seen.relpath, raw_class=seen.raw_class,
                   label=label, detail={"reason": reason} if reason else None)


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _write_manifest(summary: dict, files_seen: int, header: dict, path: str) -> None:
    manifest = dict(header)
    manifest["reconciliation"] = reconciliation(files_seen, summary.pop("totals"))
    manifest.update(summary)
    with FileSystems.create(path, mime_type="application/json") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=False).encode("utf-8"))


def _manifest_header(config: IngestConfig, nih_csv) -> dict:
    return {
        "span": config.span,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": dict(config.source_roots),
        "mapping": {"name": config.mapping.name, "nih_multilabel": config.mapping.nih_multilabel,
                    "sources": {s: dict(t) for s, t in config.mapping.by_source.items()}},
        "near_duplicate_max_distance": config.near_duplicate_max_distance,
        "max_pixels": config.max_pixels,
        "nih_label_file": nih_csv,
        "shard_pattern": f"{SHARD_PREFIX}-*{SHARD_SUFFIX}",
    }


def _check_roots(config: IngestConfig) -> None:
    for source, root in config.source_roots.items():
        if not FileSystems.exists(root):
            raise IngestError(f"--{source.replace('_', '-')}: folder {root} does not exist")


def _is_local(path: str) -> bool:
    return "://" not in path


def _prepare_output(config: IngestConfig) -> str:
    """Where to write; local spans are staged and renamed so ExampleGen never sees half a span."""
    span_dir = config.span_dir
    exists = FileSystems.exists(span_dir)
    if exists and not config.overwrite:
        raise IngestError(f"{span_dir} already exists; pass --overwrite to replace it "
                          "or --span N for a new span")
    if not _is_local(span_dir):
        if exists:
            FileSystems.delete([span_dir])
        return span_dir
    staging = os.path.join(config.out_dir, f".span-{config.span}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def _publish(staging: str, span_dir: str) -> None:
    if staging == span_dir:
        return
    if os.path.exists(span_dir):
        shutil.rmtree(span_dir)
    os.replace(staging, span_dir)
