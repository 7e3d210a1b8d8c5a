"""Arrow schemas of the two on-disk tables: items (a benchmark) and predictions (a run)."""
from __future__ import annotations

import pyarrow as pa

# One row per QA item. Images are named, not embedded: many items share an image set.
ITEM_SCHEMA = pa.schema([
    ("item_id", pa.string()),        # content hash of everything below
    ("task", pa.string()),           # geoxray.bench.tasks name, e.g. "pose_random"
    ("instance", pa.string()),       # source instance, e.g. "CVUSA_zoom18"
    ("split", pa.string()),          # "test" or "train"
    ("base_id", pa.string()),        # the index record's image_id (not unique: see record)
    ("record", pa.int32()),          # ordinal of the record in its index file
    ("location", pa.string()),       # instance + lat,lon: the bootstrap resampling unit
    ("crop", pa.string()),           # "none" or one of the 9 crop names (applies to aerials)
    ("image_paths", pa.list_(pa.string())),   # prompt order: AERIAL_0..n, then GROUND
    ("image_hashes", pa.list_(pa.string())),  # file content hashes ("" where not known yet)
    ("image_set", pa.string()),      # hash of image_paths: items sharing it share decoded images
    ("answer", pa.string()),         # gold, a canonical option string
])

# One row per (item, model, decode settings). Append-only Parquet parts under predictions/.
PREDICTION_SCHEMA = pa.schema([
    ("key", pa.string()),            # hash(item_id, prompt, model, adapter, decode)
    ("item_id", pa.string()),
    ("model", pa.string()),
    ("decode", pa.string()),         # decode mode name: "paper" or "choice"
    ("task", pa.string()),
    ("instance", pa.string()),
    ("location", pa.string()),
    ("crop", pa.string()),
    ("answer", pa.string()),         # gold
    ("reply", pa.string()),          # raw model text (null on error)
    ("pred", pa.string()),           # parsed option (null when invalid)
    ("invalid_reason", pa.string()), # null when valid: no_answer_field, not_an_option,
                                     # missing_image, corrupt_image, engine_error, timeout, ...
    ("error", pa.string()),          # detail of an engine/image error (never secrets)
    ("option_probs", pa.map_(pa.string(), pa.float64())),  # P(option), null if not scored
    ("prompt_tokens", pa.int64()),
    ("generated_tokens", pa.int64()),
    ("latency_s", pa.float64()),
    ("variant", pa.string()),        # consistency runs: "identity", "rot90", ... (else null)
    ("base_item_id", pa.string()),   # consistency runs: the item the variant transforms
])

# What scoring reads of a prediction (geoxray/run/store.py reads them; the reply text, the
# bulk of a part, stays on disk).
SCORE_COLUMNS = ("key", "item_id", "model", "decode", "task", "instance", "location", "crop",
                 "answer", "pred", "invalid_reason", "option_probs", "variant", "base_item_id")
