"""Raw text -> pretraining data on disk: what ``bertrio pretrain-data`` runs.

``write_pretraining_data(inputs, vocab_file, output, ...)`` writes

* ``format="safetensors"`` (default): a dataset directory (``bert_common.pretraining.shards``) of static
  instances, Google-exact, or with ``dynamic=True`` of raw token blocks for the dynamic masker;
* ``format="tfrecord"``: one file of ``tf.train.Example`` s in Google's layout (static only).

Output is written to a temporary sibling and renamed at the end, so a failure (a missing, empty or
non-UTF-8 input, found before anything is renamed) leaves nothing behind. ``per_file=True`` processes
each input on its own — as if Google's script were run once per file with the same flags and the outputs
concatenated — so memory is bounded by the largest file.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from bert_common.io_utils import atomic_directory, atomic_file
from bert_common.pretraining import google, shards
from bert_common.pretraining.masking import MaskingConfig

FORMATS = ("safetensors", "tfrecord")


@dataclasses.dataclass
class Summary:
    """What was written: ``output`` path, ``format``, ``kind``, instance count, output files."""
    output: str
    format: str
    kind: str
    num_instances: int
    files: list

    def line(self) -> str:
        what = "blocks (raw, for dynamic masking)" if self.kind == "raw" else "instances"
        return f"wrote {self.num_instances} {what} to {self.output} ({self.format}, {len(self.files)} file(s))"


def _check_paths(inputs: Sequence[str]) -> None:
    """Existence and non-emptiness of every input, before any work (UTF-8 is checked as each is read)."""
    if not inputs:
        raise ValueError("no INPUT files given")
    for p in inputs:
        if not os.path.exists(p):
            raise FileNotFoundError(f"input file {p!r} does not exist")
        if not os.path.isfile(p):
            raise ValueError(f"input {p!r} is not a file")
        if os.path.getsize(p) == 0:
            raise ValueError(f"input file {p!r} is empty (0 bytes); pretraining needs text, one sentence per line")


def write_pretraining_data(inputs: Sequence[str], vocab_file: str, output: str, *, format: str = "safetensors",
                           flags: google.GoogleFlags | None = None, shard_size: str | int | None = None,
                           per_file: bool = False, dynamic: bool = False, nsp: bool = True, seed: int | None = None,
                           masking: MaskingConfig | None = None, overwrite: bool = False,
                           progress: bool = False) -> Summary:
    """Write pretraining data; see the module docstring. ``flags``: Google's flags (``max_seq_length``,
    ``do_lower_case`` also apply to dynamic data); ``nsp`` / ``seed`` / ``masking``: dynamic-masking
    settings stored in the manifest (dynamic only)."""
    flags = flags or google.GoogleFlags()
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    if dynamic and format != "safetensors":
        raise ValueError("--dynamic writes raw token blocks, which only the safetensors format holds; "
                         "drop --format tfrecord (or --dynamic)")
    if not dynamic and (masking is not None or seed is not None):
        raise ValueError("masking rates and --seed apply to --dynamic data; static data uses Google's flags "
                         "(--masked-lm-prob, --random-seed)")
    if shard_size is not None and format != "safetensors":
        raise ValueError(f"--shard-size applies to --format safetensors only, not {format}")
    inputs = [os.fspath(p) for p in inputs]
    _check_paths(inputs)
    vocab = google.GoogleVocab(vocab_file)
    tok = google.GoogleTokenizer(vocab, flags.do_lower_case)
    groups = [[p] for p in inputs] if per_file else [inputs]
    base = {"vocab_size": vocab.size, "vocab_hash": shards.file_sha256(vocab_file),
            "vocab_file": os.path.basename(vocab_file), "max_seq_length": flags.max_seq_length,
            "inputs": [os.path.basename(p) for p in inputs], "per_file": bool(per_file),
            "special_ids": {"cls": vocab.cls_id, "sep": vocab.sep_id, "mask": vocab.mask_id, "unk": vocab.unk_id,
                            "pad": vocab.ids.get("[PAD]", 0)}}
    if format == "tfrecord":
        return _write_tfrecord(groups, tok, vocab, flags, output, overwrite, progress)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        if dynamic:
            s = flags.max_seq_length
            writer = shards.ShardWriter(tmp, "raw", shard_size, row_bytes=4 * s)
            doc_base = 0
            for group in groups:
                docs = google.read_documents(group, tok, progress)
                arrays = shards.raw_blocks(docs, s - 3 if nsp else s - 2, doc_base)
                doc_base += len(docs)
                _add_raw(writer, arrays)
            masking = masking or MaskingConfig()
            manifest = writer.finish({
                **base, "flags": {"max_seq_length": s, "do_lower_case": flags.do_lower_case},
                "dynamic": {"seed": 0 if seed is None else int(seed), "nsp": bool(nsp), "masking": masking.as_dict()},
                "continuation_ids": [int(i) for i in vocab.is_continuation.nonzero()[0]]})
        else:
            p = flags.max_predictions_per_seq
            writer = shards.ShardWriter(tmp, "static", shard_size, row_bytes=12 * flags.max_seq_length + 12 * p + 4)
            for group in groups:
                docs = google.read_documents(group, tok, progress)
                writer.add(google.create_instances(docs, flags, vocab, progress).arrays())
            manifest = writer.finish({**base, "max_predictions_per_seq": p, "flags": flags.as_dict()})
        files = [s["file"] for s in manifest["shards"]] + [shards.MANIFEST]
    kind = "raw" if dynamic else "static"
    return Summary(os.fspath(output), format, kind, manifest["num_instances"], files)


def _add_raw(writer: shards.ShardWriter, arrays: dict) -> None:
    """Raw blocks of one group -> shards of about ``rows_per_shard`` blocks (offsets rebased per shard)."""
    n = len(arrays["doc_ids"])
    step = writer.rows_per_shard
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        t0, t1 = arrays["block_offsets"][lo], arrays["block_offsets"][hi]
        s0, s1 = arrays["split_offsets"][lo], arrays["split_offsets"][hi]
        writer.write_shard({"tokens": arrays["tokens"][t0:t1],
                            "block_offsets": arrays["block_offsets"][lo:hi + 1] - t0,
                            "split_points": arrays["split_points"][s0:s1],
                            "split_offsets": arrays["split_offsets"][lo:hi + 1] - s0,
                            "doc_ids": arrays["doc_ids"][lo:hi]}, hi - lo)


def _write_tfrecord(groups, tok, vocab, flags, output, overwrite, progress) -> Summary:
    from bert_common.pretraining.tfrecord import write_tfrecord_examples

    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    if os.path.isdir(output):
        raise ValueError(f"--output {output!r} is a directory; --format tfrecord writes one file")
    n = 0
    with atomic_file(output, "wb") as f:
        for group in groups:
            docs = google.read_documents(group, tok, progress)
            arrays = google.create_instances(docs, flags, vocab, progress).arrays()
            write_tfrecord_examples(f, arrays)
            n += len(arrays["input_ids"])
    return Summary(os.fspath(output), "tfrecord", "static", n, [os.path.basename(output)])
