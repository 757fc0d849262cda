"""Uncertainty beyond OOD: selective prediction (misclassification detection) and calibration."""
