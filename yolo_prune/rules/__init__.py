"""Model rules: what each Ultralytics block couples, freezes and repairs (blocks, attention heads, task heads)."""
