"""Kaggle: everything that talks to Kaggle or runs on it. The client wrapper (the only network calls, each one a
command the user asked for), submissions and their scores, the notebook push of a code competition, and the offline
inference bundle that notebook runs.

Imports: every other wing and the shared basics.
"""
