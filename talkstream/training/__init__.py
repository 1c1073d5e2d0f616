"""Training: data generators and trainers. Serving code never imports this floor (tests/test_layers.py)."""
