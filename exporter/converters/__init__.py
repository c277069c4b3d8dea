"""Converters from models trained elsewhere into exporter model_fns.

Each converter module imports its own framework (scikit-learn, ...); importing `exporter` or this
package never does.
"""
