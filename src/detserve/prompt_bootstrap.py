"""A prompt bundle built from a dataset whose content is pinned: the options checked, the
dataset named (a local file with the sha256 the operator trusts, or a Hugging Face dataset file
at a pinned commit), then measured with the profile's pinned tokenizer (:mod:`detserve.prompts`).

Nothing is trusted yet: the bundle is pinned afterwards (``hash``). The profile's model revision
must be pinned, since the tokenizer that measures the prompts is the snapshot's.
"""

from __future__ import annotations

from pathlib import Path

from detserve.errors import UsageError
from detserve.hashing import sha256_file
from detserve.profile import LoadedProfile, load_profile
from detserve.prompts import (
    BootstrapRequest,
    BundleInfo,
    DatasetSource,
    build_bundle,
    download_hf_dataset_file,
)


def bootstrap_prompts(
    config: LoadedProfile | Path | str,
    *,
    output_dir: Path | str,
    n_prompts: int,
    dataset_file: Path | str | None = None,
    dataset_sha256: str | None = None,
    hf_dataset: str | None = None,
    dataset_revision: str | None = None,
    dataset_filename: str | None = None,
    fmt: str = "jsonl",
    field: str = "text",
    max_prompt_tokens: int | None = None,
    name: str = "reference_prompts",
    endpoint: str | None = None,
    force: bool = False,
) -> BundleInfo:
    """A prompt bundle built from a pinned dataset (:func:`detserve.api.bootstrap_prompts`)."""
    if fmt not in ("jsonl", "text", "requests"):
        raise UsageError(f"--format must be 'jsonl', 'text' or 'requests', not {fmt!r}")
    loaded = load_profile(config)
    loaded.require_pins(("model.revision",))
    if (dataset_file is None) == (hf_dataset is None):
        raise UsageError("give exactly one of --dataset-file or --hf-dataset")
    if dataset_file is not None:
        if not dataset_sha256:
            raise UsageError("--dataset-file needs --dataset-sha256 (the content you trust)")
        path = Path(dataset_file)
        source = DatasetSource(
            kind="local-file",
            name=path.name,
            revision=None,
            filename=path.name,
            file_sha256=dataset_sha256.lower(),
            field=field if fmt == "jsonl" else None,
        )
    else:
        assert hf_dataset is not None
        if not dataset_revision or not dataset_filename:
            raise UsageError("--hf-dataset needs --dataset-revision and --dataset-filename")
        path = download_hf_dataset_file(hf_dataset, dataset_revision, dataset_filename, endpoint)
        source = DatasetSource(
            kind="hf-dataset",
            name=hf_dataset,
            revision=dataset_revision,
            filename=dataset_filename,
            file_sha256=dataset_sha256.lower() if dataset_sha256 else sha256_file(path)[0],
            field=field if fmt == "jsonl" else None,
        )
    limit = max_prompt_tokens or (
        loaded.profile.vllm.max_model_len - loaded.profile.sampling.max_tokens
    )
    request = BootstrapRequest(
        dataset_path=path,
        source=source,
        fmt="jsonl" if fmt == "jsonl" else "requests" if fmt == "requests" else "text",
        n_prompts=n_prompts,
        max_prompt_tokens=limit,
        name=name,
    )
    info, _ = build_bundle(loaded, request, Path(output_dir), force=force)
    return info
