"""``hf:DIR`` for a folder that ``promptkit finetune --backend hf:... --lora-rank R`` wrote: a
LoRA adapter kept apart from its base.

The folder holds peft's ``adapter_config.json`` and ``adapter_model.safetensors``, the
tokenizer files, and promptkit's ``finetune.json`` (the run's record: template, data, shot
count, and the base by its ``hf:`` spec and the sha256 of its weights). Loading it loads the
base as ``hf:`` loads it, refuses it when its weights are not those the adapter was trained on,
and merges the adapter into a copy of the base (the loaded base stays as it is for others).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

__all__ = ["HF_FINETUNE_FILE", "is_hf_adapter_folder", "merged_adapter", "read_hf_adapter"]

HF_FINETUNE_FILE = "finetune.json"  # the fine-tuning run's record in an hf: output folder


def is_hf_adapter_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an adapter that promptkit fine-tuned on an ``hf:`` model."""
    return (
        folder.is_dir()
        and (folder / "adapter_config.json").is_file()
        and (folder / HF_FINETUNE_FILE).is_file()
        and not (folder / "config.json").is_file()
    )


def read_hf_adapter(folder: Path) -> dict[str, Any]:
    """The run's record of an adapter folder, checked: raises ConfigurationError naming what
    is missing (the base's spec or sha256, the adapter's weights)."""
    path = folder / HF_FINETUNE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from None
    base = record.get("base") if isinstance(record, dict) else None
    if not (
        isinstance(base, dict)
        and isinstance(base.get("spec"), str)
        and base["spec"].startswith("hf:")
        and isinstance(base.get("sha256"), str)
    ):
        raise ConfigurationError(
            f"{path} names no base ({{'spec': 'hf:...', 'sha256': ...}}); write the folder again "
            "with `promptkit finetune`"
        )
    if not (folder / "adapter_model.safetensors").is_file():
        raise ConfigurationError(
            f"the adapter folder {str(folder)!r} has no adapter_model.safetensors"
        )
    return dict(record)


def merged_adapter(folder: Path, base_model: Any, expected_sha256: str) -> Any:
    """A copy of ``base_model`` with the adapter in ``folder`` merged in. Raises
    ConfigurationError when the base's weights are not those the adapter was trained on."""
    from .scratch._adapter import weights_fingerprint

    found = weights_fingerprint(base_model)
    if found != expected_sha256:
        raise ConfigurationError(
            f"the adapter in {str(folder)!r} was trained on other weights than its base's "
            f"(sha256 {found[:12]}..., expected {expected_sha256[:12]}...); load the base it "
            "was trained on, or fine-tune again"
        )
    try:
        from peft import PeftModel
    except ImportError:
        raise ConfigurationError(
            f"hf:{folder} is a LoRA adapter, which needs peft: pip install peft"
        ) from None
    with warnings.catch_warnings():  # peft asks transformers models a deprecated property
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(folder))
    return model.merge_and_unload().eval()
