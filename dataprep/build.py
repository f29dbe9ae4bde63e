"""`cxr build-tfrecords`: the Beam pipeline from dataset folders to one TFRecord span.

Image bytes never cross a shuffle: the first pass reads each file to probe it
and passes on only its description; once duplicates are known, the writer reads
the kept files again. A shuffle on Beam's DirectRunner is held in memory, so
this keeps memory flat however many images there are.

The run holds the span's lock, writes into a staging folder of its own, checks that the
staged manifest accounts for every file it listed, each with exactly one outcome, and only
then publishes the span (span_output.py).
"""
import hashlib
import json
import os
import sys
import time
from typing import Dict, Iterator, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from cxr.contract import MANIFEST, NIH, SHARD_SUFFIX, SOURCES
from cxr.dataprep import layouts, nih, records
from cxr.dataprep.config import IngestConfig
from cxr.dataprep.dedup import Candidate, FindDuplicates
from cxr.dataprep.dicom_source import IGNORED_NAMES, DicomSource
from cxr.dicom.rules import Acquisition
from cxr.dataprep.ledger import (
    MISSING_EXAMPLES, QUARANTINED, UNMAPPED, WRITTEN, Ignored, LedgerCombineFn, MissingNihFile, Outcome,
    reconciliation)
from cxr.dataprep.listing import ListedFile, is_local, list_files
from cxr.dataprep.mapping import ClassMapping
from cxr.dataprep.probe import ImageFacts, probe
from cxr.dataprep.span_output import (
    discard, publish, restore_interrupted_publish, span_lock, staging_dir)
from cxr.output import reconciliation_table

SHARD_PREFIX = "data"
SPREAD_BATCH = 64  # files per element spread over the workers
_METRICS = "cxr_ingest"
_OUTCOMES = "outcomes"
_IGNORED = "ignored"
_MISSING = "missing"


class IngestError(RuntimeError):
    """The run cannot start or did not account for every file."""


def build_tfrecords(config: IngestConfig) -> dict:
    """Runs the pipeline, publishes the span and returns the manifest it wrote beside the shards."""
    _check_roots(config)
    nih_csv = nih.find_csv(config.root(NIH)) if config.root(NIH) else None
    with span_lock(config.out_dir, config.span):
        restored = restore_interrupted_publish(config.span_dir)
        if restored:
            print(f"build-tfrecords: {restored}", file=sys.stderr)
        if FileSystems.exists(config.span_dir) and not config.overwrite:
            raise IngestError(f"{config.span_dir} already exists; pass --overwrite to replace it "
                              "or --span N for a new span")
        staging = staging_dir(config.out_dir, config.span)
        try:
            with beam.Pipeline(options=PipelineOptions(list(config.pipeline_args()))) as pipeline:
                _ingest(pipeline, config, nih_csv, staging, _manifest_header(config, nih_csv))
            manifest = read_manifest(staging)
            _check_staged(config, staging, manifest)
            publish(staging, config.span_dir, config.overwrite)
        except _KeepStaging:
            raise
        except BaseException:
            discard(staging)
            raise
    return manifest


class _KeepStaging(IngestError):
    """Refused after the run; its staging folder is kept for inspection."""


def _check_staged(config: IngestConfig, staging: str, manifest: dict) -> None:
    table = manifest["reconciliation"]
    if not table["balanced"]:
        raise _KeepStaging(f"nothing published: the outcomes do not account for every file seen "
                           f"({reconciliation_table(table)}); the run is kept in {staging}")
    if table[WRITTEN] == 0:
        discard(staging)
        by_source = config.mapping.by_source
        looked_for = "; ".join(f"{_flag(source)} {root}: {layouts.expected_layout(source, by_source.get(source, {}))}"
                               for source, root in config.source_roots.items())
        raise IngestError(f"no image written, nothing published ({table['seen']} files seen, "
                          f"{table[UNMAPPED]} of classes the mapping {config.mapping.name!r} does not take, "
                          f"{table[QUARANTINED]} quarantined). Looked for {looked_for}")


def read_manifest(span_dir: str) -> dict:
    with FileSystems.open(f"{span_dir}/{MANIFEST}") as f:
        return json.loads(f.read().decode("utf-8"))


def _ingest(pipeline, config: IngestConfig, nih_csv, staging: str, header: dict) -> None:
    discovered = [_discover(pipeline, config, source, nih_csv)
                  for source in SOURCES if config.root(source)]
    if config.dicom is not None:
        discovered.append(_discover_dicom(pipeline, config.dicom))
    seen = [d.seen for d in discovered] | "AllSeenFiles" >> beam.Flatten()
    seen_count = seen | "CountSeen" >> beam.combiners.Count.Globally()
    probed = (
        seen
        # Spreads the files over the workers (discovery yields them from one element).
        # In batches of plain tuples: the shuffle's cost is per element (bench/RESULTS.md, "Ingestion: what
        # changed").
        | "Batch" >> beam.BatchElements(min_batch_size=SPREAD_BATCH, max_batch_size=SPREAD_BATCH)
        | "Plain" >> beam.Map(lambda batch: [seen.plain() for seen in batch])
        | "SpreadOverWorkers" >> beam.Reshuffle()
        | "Unbatch" >> beam.FlatMap(lambda batch: map(layouts.SeenFile.from_plain, batch))
        | "ProbeImages" >> beam.ParDo(ProbeFile(config.mapping, config.max_pixels, config.dicom)).with_outputs(
            _OUTCOMES, main="candidates"))
    removed = probed.candidates | "FindDuplicates" >> FindDuplicates(config.near_duplicate_max_distance)
    written = probed.candidates | "BuildExamples" >> beam.ParDo(
        BuildExample(config.dicom), removed=beam.pvalue.AsDict(removed | "KeyRemoved" >> beam.Map(lambda o: (o.file, o)))
    ).with_outputs(_OUTCOMES, main="examples")
    _ = written.examples | "WriteShards" >> beam.io.Write(records.ShardSink(f"{staging}/{SHARD_PREFIX}"))
    outcomes = [probed[_OUTCOMES], removed, written[_OUTCOMES]] | "AllOutcomes" >> beam.Flatten()
    unaccounted = _files_without_exactly_one_outcome(seen, outcomes)
    ledger_entries = [outcomes] + [d.ignored for d in discovered]
    ledger_entries += [d.missing for d in discovered if d.missing is not None]
    some_unaccounted = unaccounted | "SomeUnaccounted" >> beam.combiners.Sample.FixedSizeGlobally(MISSING_EXAMPLES)
    unaccounted_count = unaccounted | "CountUnaccounted" >> beam.combiners.Count.Globally()
    _ = (ledger_entries
         | "AllLedgerEntries" >> beam.Flatten()
         | "Summarise" >> beam.CombineGlobally(LedgerCombineFn())
         | "WriteManifest" >> beam.Map(
             _write_manifest, files_seen=beam.pvalue.AsSingleton(seen_count), header=header,
             path=f"{staging}/{MANIFEST}", unaccounted=beam.pvalue.AsSingleton(some_unaccounted),
             unaccounted_count=beam.pvalue.AsSingleton(unaccounted_count)))


def _files_without_exactly_one_outcome(seen, outcomes):
    """The identities, not only the counts: each file listed must end in exactly one outcome."""
    return ({"seen": seen | "SeenIds" >> beam.Map(lambda f: (f"{f.source}:{f.relpath}", 1)),
             "outcomes": outcomes | "OutcomeIds" >> beam.Map(lambda o: (o.file, o.status))}
            | "OutcomesPerFile" >> beam.CoGroupByKey()
            | "NotExactlyOne" >> beam.FlatMap(
                lambda keyed: [] if len(keyed[1]["seen"]) == 1 and len(keyed[1]["outcomes"]) == 1 else [
                    f"{keyed[0]} (listed {len(keyed[1]['seen'])}x, outcomes {sorted(keyed[1]['outcomes'])})"]))


class _Discovered(NamedTuple):
    seen: beam.PCollection
    ignored: beam.PCollection
    missing: Optional[beam.PCollection] = None  # NIH rows whose file is absent


def _discover(pipeline, config: IngestConfig, source: str, nih_csv) -> _Discovered:
    root = config.root(source).rstrip("/")
    listed = (pipeline
              | f"Root[{source}]" >> beam.Create([root])
              | f"List[{source}]" >> beam.FlatMap(list_files)
              | f"Classify[{source}]" >> beam.ParDo(ClassifyFile(source, root)).with_outputs(
                  _IGNORED, main="files"))
    if source != NIH:
        return _Discovered(listed.files, listed[_IGNORED])
    rows = (pipeline
            | "NihLabelFile" >> beam.Create([nih_csv])
            | "ReadNihRows" >> beam.FlatMap(nih.read_rows)
            | "KeyNihRows" >> beam.Map(lambda row: (row.image_index, tuple(row))))  # plain tuples: see SeenFile.plain
    files = listed.files | "KeyNihFiles" >> beam.Map(lambda f: (os.path.basename(f.path), f.plain()))
    joined = ({"file": files, "row": rows}
              | "JoinNihRowsAndFiles" >> beam.CoGroupByKey()
              | "LabelNihFiles" >> beam.FlatMap(_label_nih_files, csv_name=os.path.basename(nih_csv))
              .with_outputs(_MISSING, main="seen"))
    return _Discovered(joined.seen, listed[_IGNORED], joined[_MISSING])


def _discover_dicom(pipeline, dicom: DicomSource) -> _Discovered:
    root = dicom.root.rstrip("/")
    listed = (pipeline
              | "Root[dicom]" >> beam.Create([root])
              | "List[dicom]" >> beam.FlatMap(list_files)
              | "Classify[dicom]" >> beam.ParDo(ClassifyDicomFile(dicom, root)).with_outputs(_IGNORED, main="files"))
    return _Discovered(listed.files, listed[_IGNORED])


class ClassifyDicomFile(beam.DoFn):
    """Listed file of a DICOM export -> SeenFile under its path's pseudonym (the path may hold an MRN), or
    an ignored file. The real path stays in SeenFile.path, for reading only: outcomes carry relpath."""

    def __init__(self, dicom: DicomSource, root: str):
        self._dicom, self._root = dicom, root

    def process(self, listed: ListedFile) -> Iterator:
        relpath = layouts.relative_path(self._root, listed.path)
        reason = layouts.ignore_reason(relpath)
        if reason is None and relpath.rsplit("/", 1)[-1].casefold() in IGNORED_NAMES:
            reason = "DICOMDIR"
        if reason is not None:
            yield beam.pvalue.TaggedOutput(_IGNORED, Ignored(self._dicom.source, reason))
            return
        pseudonym = self._dicom.file_pseudonym(relpath)
        problem = "cannot be read (a broken link, or no permission)" if listed.problem else None
        yield layouts.SeenFile(source=self._dicom.source, path=listed.path, relpath=pseudonym, size=listed.size,
                               raw_class=self._dicom.labels_by_file.get(relpath, ""), image_id=pseudonym,
                               patient_id="", problem=problem)


class ClassifyFile(beam.DoFn):
    """Listed file -> a dataset image (SeenFile) or an ignored non-image file."""

    def __init__(self, source: str, root: str):
        self._source, self._root = source, root

    def process(self, listed: ListedFile) -> Iterator:
        relpath = layouts.relative_path(self._root, listed.path)
        reason = layouts.ignore_reason(relpath)
        if reason is None and self._source == NIH and not layouts.is_nih_image_path(relpath) and not listed.problem:
            reason = "outside images_NNN/images/"
        if reason is not None:
            yield beam.pvalue.TaggedOutput(_IGNORED, Ignored(self._source, reason))
        else:
            seen = layouts.folder_labelled_file(self._source, listed.path, relpath, listed.size)
            yield seen._replace(problem=listed.problem)


def _label_nih_files(keyed, csv_name: str) -> Iterator:
    image_index, grouped = keyed
    rows = [nih.NihRow(*row) for row in grouped["row"]]
    files = [layouts.SeenFile.from_plain(found) for found in grouped["file"]]
    if not files:
        yield beam.pvalue.TaggedOutput(_MISSING, MissingNihFile(image_index))
    for found in files:
        if not rows:
            yield found._replace(problem=f"not listed in {csv_name}", raw_class="")
            continue
        row = rows[0]
        yield found._replace(raw_class=row.finding_labels, patient_id=row.patient_id,
                             acquisition=Acquisition.stated(view_position=row.view_position))


class ProbeFile(beam.DoFn):
    """Seen file -> Candidate (labelled, readable) or the outcome that ends it here."""
    PROGRESS_EVERY_S = 5.0

    def __init__(self, mapping: ClassMapping, max_pixels: int, dicom: Optional[DicomSource] = None):
        self._mapping, self._max_pixels, self._dicom = mapping, max_pixels, dicom

    def setup(self):
        self._done, self._last_report = 0, time.monotonic()
        self._started = self._last_report
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
        if self._dicom is not None and seen.source == self._dicom.source:
            return self._classify_dicom(seen)
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

    def _classify_dicom(self, seen: layouts.SeenFile):
        """The file converted as everywhere else; the candidate carries pseudonyms, the PNG's facts."""
        from cxr.dicom.convert import DicomRefused, convert
        try:
            data = _read(seen.path)
        except OSError as error:
            return _ended(seen, QUARANTINED, reason=f"cannot read file ({error.strerror or type(error).__name__})")
        try:
            converted = convert(data, self._dicom.rules)
        except DicomRefused as refused:
            return _ended(seen, QUARANTINED, label=seen.raw_class or None, reason=str(refused))
        label = self._dicom.label_of("", converted.sop_instance_uid) if not seen.raw_class else seen.raw_class
        if not label:
            return _ended(seen._replace(raw_class=NO_DICOM_LABEL), UNMAPPED)
        if not converted.patient_id:
            return _ended(seen, QUARANTINED, label=label,
                          reason="(0010,0020) Patient ID: missing; the split by patient needs it")
        facts = probe(converted.png, self._max_pixels)
        if not isinstance(facts, ImageFacts):
            return _ended(seen, QUARANTINED, label=label, reason=facts)
        image_id = self._dicom.image_pseudonym(converted.sop_instance_uid) if converted.sop_instance_uid \
            else seen.image_id
        seen = seen._replace(raw_class=label, patient_id=self._dicom.patient_pseudonym(converted.patient_id),
                             image_id=image_id, acquisition=converted.acquisition)
        return Candidate(seen=seen, label=label, facts=facts)

    def _report_progress(self):
        self._done += 1
        now = time.monotonic()
        if now - self._last_report >= self.PROGRESS_EVERY_S:
            rate = self._done / max(now - self._started, 1e-9)
            print(f"build-tfrecords: worker {os.getpid()} has looked at {self._done:,} files ({rate:,.0f} per s)",
                  file=sys.stderr, flush=True)
            self._last_report = now


class BuildExample(beam.DoFn):
    """Kept candidate -> serialized tf.Example (bytes read again; a DICOM converted again, its PNG written)
    and a 'written' outcome."""

    def __init__(self, dicom: Optional[DicomSource] = None):
        self._dicom = dicom

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
        if self._dicom is not None and seen.source == self._dicom.source:
            data = self._png_of(data)
        if data is None or hashlib.sha256(data).hexdigest() != candidate.facts.sha256:
            yield beam.pvalue.TaggedOutput(_OUTCOMES, _ended(
                seen, QUARANTINED, label=candidate.label, reason="file changed during ingestion"))
            return
        self._written.inc()
        yield records.to_example(candidate, data).SerializeToString()
        yield beam.pvalue.TaggedOutput(_OUTCOMES, Outcome(
            status=WRITTEN, source=seen.source, relpath=seen.relpath, raw_class=seen.raw_class,
            label=candidate.label))


    def _png_of(self, data: bytes) -> Optional[bytes]:
        from cxr.dicom.convert import DicomRefused, convert
        try:
            return convert(data, self._dicom.rules).png
        except DicomRefused:
            return None  # it converted when probed: the file changed


NO_DICOM_LABEL = "(no label in --dicom-labels)"


def _ended(seen: layouts.SeenFile, status: str, label=None, reason=None) -> Outcome:
    return Outcome(status=status, source=seen.source, relpath=seen.relpath, raw_class=seen.raw_class,
                   label=label, detail={"reason": reason} if reason else None)


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _write_manifest(summary: dict, files_seen: int, header: dict, path: str, unaccounted, unaccounted_count) -> None:
    manifest = dict(header)
    manifest["reconciliation"] = reconciliation(files_seen, summary.pop("totals"), unaccounted, unaccounted_count)
    manifest.update(summary)
    with FileSystems.create(path, mime_type="application/json") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=False).encode("utf-8"))


def _manifest_header(config: IngestConfig, nih_csv) -> dict:
    return {
        "span": config.span,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": dict(config.source_roots),
        "dicom": config.dicom.describe() if config.dicom is not None else None,
        "mapping": {"name": config.mapping.name, "nih_multilabel": config.mapping.nih_multilabel,
                    "sources": {s: dict(t) for s, t in config.mapping.by_source.items()}},
        "near_duplicate_max_distance": config.near_duplicate_max_distance,
        "max_pixels": config.max_pixels,
        "nih_label_file": nih_csv,
        "shard_pattern": f"{SHARD_PREFIX}-*{SHARD_SUFFIX}",
    }


def _check_roots(config: IngestConfig) -> None:
    """Each folder exists and does not look like another of the three datasets."""
    if config.dicom is not None and not FileSystems.exists(config.dicom.root):
        raise IngestError(f"--dicom: folder {config.dicom.root} does not exist")
    for source, root in config.source_roots.items():
        flag = _flag(source)
        if not FileSystems.exists(root):
            raise IngestError(f"{flag}: folder {root} does not exist")
        looks_like = layouts.recognise(_names_near(root))
        if looks_like and source not in looks_like:
            other, marks = next(iter(looks_like.items()))
            raise IngestError(f"{flag} {root} looks like {layouts.DATASET_NAMES[other]}, not "
                              f"{layouts.DATASET_NAMES[source]}: it has {', '.join(marks)}")


def _flag(source: str) -> str:
    return f"--{source.replace('_', '-')}"


def _names_near(root: str):
    """The names of the files and folders in a root and one level below it."""
    root = root.rstrip("/")
    if not is_local(root):
        found = FileSystems.match([f"{root}/*", f"{root}/*/*"])
        return {metadata.path.rstrip("/").rsplit("/", 1)[-1] for result in found for metadata in result.metadata_list}
    names = set()
    for entry in os.scandir(root):
        names.add(entry.name)
        if entry.is_dir():
            names.update(os.listdir(entry.path))
    return names
