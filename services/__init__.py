"""Online services of the fraud platform."""
