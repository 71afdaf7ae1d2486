"""``harness prepare DATASET --root DIR``: a dataset card's clips decoded into the prepared cache, from the CLI.

The decoding itself is ``harness.data.prepare``; this module resolves the card with ``--root``, ``--cache`` and
``--set`` into validated format parameters, runs it, and says where the manifest is.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from harness.config import ConfigError, parse_override
from harness.config.errors import pydantic_errors
from harness.data.annotations import AnnotationError
from harness.data.dataset import PreparedDataset
from harness.data.prepare import PrepareError
from harness.data.storage import harness_cache
from harness.registry import DATASETS, FORMATS, UnknownNameError


def resolve_params(dataset: str, root: str, cache: str | None, overrides: list[str]):
    """(loader class, validated params) of a card with ``root``, ``cache`` and ``--set`` overrides.

    Raises:
        ConfigError: unknown dataset, a dataset that is not prepared from files, or invalid parameters.
    """
    try:
        card = DATASETS.get(dataset)
    except UnknownNameError as e:
        raise ConfigError([("DATASET", str(e))]) from e
    cls = FORMATS.get(card["format"])
    from_files = getattr(cls, "from_files", False)  # a format that decodes its own files (harness.data.avsbench)
    if not (isinstance(cls, type) and (issubclass(cls, PreparedDataset) or from_files)):
        raise ConfigError([("DATASET", f"{dataset!r} (format {card['format']!r}) is not read from media files")])
    fields = {**card["params"], "root": root}
    if cache:
        fields["cache"] = cache
    for text in overrides:
        key, value = parse_override(text)
        fields[key.removeprefix("dataset.")] = value
    try:
        return cls, cls.Config.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(pydantic_errors(e, "dataset", cls.Config)) from e


def prepare_dataset(dataset: str, root: str, cache: str | None, workers: int, strict: bool,
                    overrides: list[str], dry_run: bool = False) -> int:  # fmt: skip
    """Print the size estimate, decode, cache, print the summary line (``dry_run``: the estimate only); 1 when
    ``strict`` meets a corrupt file (or an annotation error)."""
    cls, params = resolve_params(dataset, root, cache, overrides)
    try:
        manifest = cls.prepare(params, harness_cache(), workers=workers, strict=strict, dry_run=dry_run)
    except (PrepareError, AnnotationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if dry_run:
        return 0
    folder = cls.cache_folder(params, harness_cache())
    print(f"manifest {folder / 'manifest.json'} (hash {manifest['hash']}, decoder {manifest['decoder']})")
    return 0
