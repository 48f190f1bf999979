"""Kaggle: everything that talks to Kaggle or runs on it. The client wrapper (the only network calls, each one a
command the user asked for), submissions and their scores, the notebook push of a code competition, the offline
inference bundle that notebook runs, and training on Kaggle's GPUs (send, the notebook's script, collect, the wheels
for each Python of Kaggle's image).

Imports: every other wing and the shared basics.
"""
