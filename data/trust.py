"""The trust boundary in code (the policy is ``docs/SECURITY.md``): paths read from files someone else wrote
stay inside their root, and secrets never leave the process in a card, a log or a saved config.

    check_inside(image_root, "birds/0001.png", "train.csv row 3, field 'image_path'")   # the resolved path
    without_secrets({"hub_token": "hf_...", "lr": 2e-4})     # {"hub_token": "<redacted>", "lr": 0.0002}

Paths are judged after resolving symbolic links: a link inside a root that points outside it leaves the root,
whatever its text says.
"""

from __future__ import annotations

import re
from pathlib import Path

REDACTED = "<redacted>"
# `hub_token`, `push_to_hub_token`, `api_key`, `wandb_key`, `aws_secret`, `password`: the settings that carry
# credentials. Tokenizer settings that name a special token (`eos_token`, `pad_token`, ...) hold text such as
# "</s>", not a credential, and are kept.
_SECRET_KEY = re.compile(r"(^|_)(token|key|secret|password)$", re.IGNORECASE)
_SPECIAL_TOKEN_KEY = re.compile(r"^(bos|eos|pad|unk|sep|cls|mask|image|video|audio|boi|eoi|fake_image|global_image|"
                                r"summary|end_of_utterance|additional_special)_tokens?$", re.IGNORECASE)


def is_secret_key(key) -> bool:
    """Whether a setting named ``key`` carries a credential (``hub_token``, any ``*_token`` / ``*_key``)."""
    return isinstance(key, str) and bool(_SECRET_KEY.search(key)) and not _SPECIAL_TOKEN_KEY.match(key)


def without_secrets(value):
    """A copy of ``value`` (dicts and lists, nested) whose credential settings read ``<redacted>``."""
    if isinstance(value, dict):
        return {key: REDACTED if is_secret_key(key) and item else without_secrets(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_secrets(item) for item in value)
    return value


def secret_keys(value, prefix: str = "") -> list[str]:
    """The dotted names of the credential settings in ``value`` that hold something (for warnings)."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            name = f"{prefix}{key}"
            found += [name] if is_secret_key(key) and item else secret_keys(item, f"{name}.")
        return found
    return []


def resolved_inside(root: str | Path, relative: str | Path) -> bool:
    """Whether ``root / relative``, symbolic links resolved, lies inside ``root`` (resolved too)."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    return target == base or base in target.parents


def check_inside(root: str | Path, relative: str | Path, where: str) -> Path:
    """``root / relative`` when it resolves inside ``root``; otherwise a ValueError naming ``where``."""
    if not resolved_inside(root, relative):
        target = (Path(root) / relative).resolve()
        raise ValueError(f"{where}: {str(relative)!r} resolves to {target}, outside {Path(root)} (an absolute "
                         "path, '..', or a symbolic link leading out): refused")
    return Path(root) / relative
