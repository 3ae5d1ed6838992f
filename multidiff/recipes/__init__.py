"""Recipe pipelines: idempotent stages (prepare, train, sample, evaluate) per recipe kind."""
