"""What the store's detections mean: effort, summaries, occupancy histories, the HTML
report, Raven/Audacity exports and the review loop. Reads the store; writes only derived
tables under ``STORE/summaries``, ``STORE/reports`` and ``STORE/labels``."""
