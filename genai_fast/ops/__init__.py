"""Public ops: one module per op (public function, custom op, reference, backend registrations)."""

from genai_fast.ops.group_norm import group_norm, group_norm_reference

__all__ = ["group_norm", "group_norm_reference"]
