"""Training data and (later) the two training stages of 3D Cinemagraphy (issue 12).

The official release is inference-only; this package publishes training: `procedural` (a generator of
clips with exact flow, depth and novel views, `cine-jax make-data`) and `clips` (real clip folders ->
average Eulerian flow, motion mask and hints, the paper's data recipe).
"""
