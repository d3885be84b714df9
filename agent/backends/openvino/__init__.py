"""OpenVINO: backend (IR export, compile with the precision pinned), variants (IR precision, NNCF int8,
what the device really computes in)."""
