"""Toolkit for the 2018 Data Science Bowl nucleus-segmentation competition."""

__version__ = "0.1.0"
