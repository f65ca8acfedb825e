"""Recorder service: writes the article's history files from each round's selection."""
