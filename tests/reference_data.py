"""The official code's reference vectors, kept in the repository so a clean clone checks the central numeric claim
(the re-implementation equals the paper's code stage by stage) without anything beside it. Copied unchanged from
the project's shared reference (`vectors/README.md` says how they were produced: the official Pose Anything code on
CPU); the `keys_*.json` files list the released checkpoints' state-dict keys and shapes."""

from __future__ import annotations

from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
VECTORS = REFERENCE / "vectors"
