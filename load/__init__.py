"""Load generators and HTTP replays against the scorer."""
