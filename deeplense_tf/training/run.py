from deeplense_tf.runs.run import Run  # noqa: F401  (moved to deeplense_tf.runs; kept for old imports)
