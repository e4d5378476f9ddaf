"""Locations of the shared test material: the `shared` directory beside the repository."""

from pathlib import Path

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
VOICE_PROMPTS_DIR = SHARED_DIR / "voice_prompts"
REPO_DIR = Path(__file__).resolve().parents[1]
