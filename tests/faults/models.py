"""Models for failure tests (atomic writes, overload); filled in by those tests' authors."""
