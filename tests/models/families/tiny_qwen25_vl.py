"""Qwen2.5-VL's contract hook: Qwen2-VL's (windowed vision attention changes what is tapped, not the contract)."""

from __future__ import annotations

from tests.models.families.tiny_qwen2_vl import CONTRACT as CONTRACT
