"""Built-in datasets generated offline: shapes for detection, and their segment/pose/obb variants."""
