"""Rules for the names users choose: namespaces, machine ids, worktree names and machine labels."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MACHINE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
MAX_SLUG = 48
# Labels are matched by placement and shown in listings: short, no spaces, no commas (the
# MACHINE_HUB_LABELS separator), no '=' in the key.
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9._:/@+-]{1,128}$")
MAX_LABELS = 32


def valid_namespace(name: str) -> bool:
    return NAMESPACE_RE.fullmatch(name) is not None


def valid_machine_id(machine_id: str) -> bool:
    return MACHINE_ID_RE.fullmatch(machine_id) is not None


def worktree_slug(name: str) -> str:
    """Folder and branch name for a worktree: lowercase, runs of other characters become '-'.

    As in HAPI. The result only holds [a-z0-9-] and never starts or ends with '-', so with a
    valid prefix it is always a legal git branch name; an empty result means "unusable".
    """
    return _NOT_SLUG.sub("-", name.strip().lower())[:MAX_SLUG].strip("-")


def new_job_id(machine_id: str) -> str:
    """`<machine id>.<32 hex>`: any hub can find a job's keys from its id alone."""
    return f"{machine_id}.{uuid.uuid4().hex}"


def job_machine(job_id: str) -> str | None:
    """The machine id inside a job id, or None when the id is malformed."""
    machine_id, dot, tail = job_id.rpartition(".")
    if not dot or len(tail) != 32 or not all(c in "0123456789abcdef" for c in tail):
        return None
    return machine_id if valid_machine_id(machine_id) else None


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """`key=value` strings as a dict; ValueError saying which one is wrong and how."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"label {item!r} must be key=value")
        if not LABEL_KEY_RE.fullmatch(key):
            raise ValueError(f"label key {key!r} must match {LABEL_KEY_RE.pattern}")
        if not LABEL_VALUE_RE.fullmatch(value):
            raise ValueError(f"label {key}: value {value!r} must match {LABEL_VALUE_RE.pattern}")
        if key in labels:
            raise ValueError(f"label {key} is given twice")
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, not {len(labels)}")
    return labels
